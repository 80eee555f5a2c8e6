//! A tiny loopback HTTP/1.1 file server for build contexts (tarballs), and
//! helpers to make tarballs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Serves fixed files on `127.0.0.1:<random port>` (or another local address) until dropped (the
/// listener thread lives as long as the process; dropping stops answering).
pub struct FileServer {
    host: String,
    port: u16,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    requests: Arc<AtomicUsize>,
}

fn etag(data: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    format!("\"{:016x}-{}\"", h.finish(), data.len())
}

fn handle(mut stream: TcpStream, files: &Mutex<HashMap<String, Vec<u8>>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut if_none_match = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("if-none-match")
        {
            if_none_match = Some(v.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/").split('?').next().unwrap_or("/");
    let file = files.lock().ok().and_then(|f| f.get(path).cloned());
    match file {
        Some(data) => {
            let tag = etag(&data);
            if if_none_match.as_deref() == Some(tag.as_str()) {
                write!(
                    stream,
                    "HTTP/1.1 304 Not Modified\r\nETag: {tag}\r\nConnection: close\r\n\r\n"
                )?;
            } else {
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nETag: {tag}\r\nConnection: close\r\n\r\n",
                    data.len()
                )?;
                if method != "HEAD" {
                    stream.write_all(&data)?;
                }
            }
        }
        None => {
            write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"
            )?;
        }
    }
    stream.flush()
}

impl FileServer {
    /// Starts serving `files` (path → content) on the loopback.
    pub fn start(files: &[(&str, Vec<u8>)]) -> FileServer {
        Self::start_on("127.0.0.1", files)
    }

    /// Starts serving `files` on `host` (an address of this machine), on a free port.
    pub fn start_on(host: &str, files: &[(&str, Vec<u8>)]) -> FileServer {
        let listener = TcpListener::bind((host, 0)).expect("bind the file server");
        let port = listener.local_addr().expect("addr").port();
        let files = Arc::new(Mutex::new(
            files
                .iter()
                .map(|(p, d)| (p.to_string(), d.clone()))
                .collect::<HashMap<_, _>>(),
        ));
        let requests = Arc::new(AtomicUsize::new(0));
        let (f, r) = (files.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                r.fetch_add(1, Ordering::SeqCst);
                let f = f.clone();
                std::thread::spawn(move || {
                    let _ = handle(stream, &f);
                });
            }
        });
        FileServer {
            host: host.to_owned(),
            port,
            files,
            requests,
        }
    }

    /// `http://<host>:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.port)
    }

    /// Adds or replaces a file.
    pub fn put(&self, path: &str, data: Vec<u8>) {
        if let Ok(mut f) = self.files.lock() {
            f.insert(path.to_string(), data);
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// An uncompressed tar of `(path, content)` files (mode 0644, mtime 0).
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, path, *data).expect("tar append");
    }
    b.into_inner().expect("tar finish")
}

/// A gzip-compressed [`tar`].
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar(files)).expect("gzip");
    gz.finish().expect("gzip finish")
}
