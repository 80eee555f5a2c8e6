//! BuildKit addresses (`unix://`, `tcp://`, `docker-unix://`) and mTLS settings.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::Error;

/// Where a BuildKit daemon listens.
///
/// Parsed from the same address syntax `buildctl --addr` uses, plus
/// `docker-unix://` for Docker's embedded BuildKit:
///
/// | address | meaning |
/// |---|---|
/// | `unix:///run/buildkit/buildkitd.sock` | buildkitd's gRPC socket (production) |
/// | `tcp://host:1234` | buildkitd over TCP; pair it with a [`TlsConfig`] for mTLS |
/// | `docker-unix:///var/run/docker.sock` | Docker's embedded BuildKit through `POST /grpc` and `POST /session` |
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// buildkitd's gRPC API on a unix socket.
    Unix(PathBuf),
    /// buildkitd's gRPC API on TCP (plain HTTP/2, or mTLS with a [`TlsConfig`]).
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// Docker's embedded BuildKit, reached through the Docker API socket.
    DockerUnix(PathBuf),
}

/// The Docker API socket used by `docker-unix://` without a path.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// buildkitd's default socket.
pub const DEFAULT_BUILDKIT_SOCKET: &str = "/run/buildkit/buildkitd.sock";

impl Endpoint {
    /// Parses an address; see the type's documentation for the syntax.
    pub fn parse(address: &str) -> Result<Self, Error> {
        address.parse()
    }

    /// True for Docker's embedded BuildKit.
    pub fn is_docker(&self) -> bool {
        matches!(self, Endpoint::DockerUnix(_))
    }
}

fn invalid(address: &str, reason: impl Into<String>) -> Error {
    Error::InvalidEndpoint {
        address: address.to_string(),
        reason: reason.into(),
    }
}

fn socket_path(address: &str, rest: &str, default: Option<&str>) -> Result<PathBuf, Error> {
    let path = if rest.is_empty() {
        match default {
            Some(d) => d,
            None => return Err(invalid(address, "the socket path is missing")),
        }
    } else {
        rest
    };
    if !path.starts_with('/') {
        return Err(invalid(
            address,
            "the socket path must be absolute (three slashes: unix:///path/to.sock)",
        ));
    }
    Ok(PathBuf::from(path))
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(address: &str) -> Result<Self, Error> {
        let address = address.trim();
        let Some((scheme, rest)) = address.split_once("://") else {
            return Err(invalid(
                address,
                "expected scheme://…, one of unix://, tcp://, docker-unix://",
            ));
        };
        match scheme {
            "unix" => Ok(Endpoint::Unix(socket_path(address, rest, None)?)),
            "docker-unix" => Ok(Endpoint::DockerUnix(socket_path(
                address,
                rest,
                Some(DEFAULT_DOCKER_SOCKET),
            )?)),
            "tcp" => {
                let hostport = rest.trim_end_matches('/');
                if hostport.contains('/') {
                    return Err(invalid(address, "tcp:// takes host:port only, no path"));
                }
                let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
                    let (host, after) = bracketed
                        .split_once(']')
                        .ok_or_else(|| invalid(address, "unterminated [IPv6] address"))?;
                    let port = after
                        .strip_prefix(':')
                        .ok_or_else(|| invalid(address, "the port is missing (tcp://host:port)"))?;
                    (host, port)
                } else {
                    hostport
                        .rsplit_once(':')
                        .ok_or_else(|| invalid(address, "the port is missing (tcp://host:port)"))?
                };
                if host.is_empty() {
                    return Err(invalid(address, "the host is missing (tcp://host:port)"));
                }
                let port: u16 = port
                    .parse()
                    .map_err(|_| invalid(address, format!("invalid port {port:?}")))?;
                if port == 0 {
                    return Err(invalid(address, "port 0 is not a valid BuildKit port"));
                }
                Ok(Endpoint::Tcp {
                    host: host.to_string(),
                    port,
                })
            }
            other => Err(invalid(
                address,
                format!(
                    "unsupported scheme {other:?}; use unix:///path, tcp://host:port or docker-unix:///var/run/docker.sock"
                ),
            )),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::DockerUnix(p) => write!(f, "docker-unix://{}", p.display()),
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

/// Client side of BuildKit's mTLS (`buildctl --tlscacert --tlscert --tlskey
/// --tlsservername`). All material is PEM.
///
/// `Debug` never prints the key.
#[derive(Clone, Default)]
pub struct TlsConfig {
    /// CA certificate(s) that signed the daemon's certificate.
    pub ca: Vec<u8>,
    /// Client certificate (required by buildkitd when it was started with a CA).
    pub cert: Option<Vec<u8>>,
    /// Client private key for `cert`.
    pub key: Option<Vec<u8>>,
    /// Name to verify in the daemon's certificate; defaults to the endpoint's host.
    pub server_name: Option<String>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca", &format_args!("<{} bytes>", self.ca.len()))
            .field("cert", &self.cert.as_ref().map(|c| format!("<{} bytes>", c.len())))
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, Error> {
    let data =
        std::fs::read(path).map_err(|e| Error::Tls(format!("cannot read the {what} {}: {e}", path.display())))?;
    if !data.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::Tls(format!(
            "the {what} {} is not PEM (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(data)
}

impl TlsConfig {
    /// Reads the CA, and optionally the client certificate and key, from PEM files.
    pub fn from_files(ca: impl AsRef<Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Self, Error> {
        let tls = TlsConfig {
            ca: read_pem("CA certificate", ca.as_ref())?,
            cert: cert.map(|p| read_pem("client certificate", p)).transpose()?,
            key: key.map(|p| read_pem("client key", p)).transpose()?,
            server_name: None,
        };
        tls.validate()?;
        Ok(tls)
    }

    /// Reads `ca.pem`, `cert.pem` and `key.pem` from a directory, like
    /// `buildctl --tlsdir` (a mounted `kubernetes.io/tls` Secret can be
    /// projected to those names). `cert.pem`/`key.pem` are optional.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let opt = |name: &str| {
            let p = dir.join(name);
            p.exists().then_some(p)
        };
        let cert = opt("cert.pem");
        let key = opt("key.pem");
        Self::from_files(dir.join("ca.pem"), cert.as_deref(), key.as_deref())
    }

    /// Sets the name verified in the daemon's certificate.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Checks that the settings are complete (certificate and key come together).
    pub fn validate(&self) -> Result<(), Error> {
        if self.ca.is_empty() {
            return Err(Error::Tls("the CA certificate is empty".into()));
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(Error::Tls("a client certificate was given without its key".into())),
            (None, Some(_)) => Err(Error::Tls("a client key was given without its certificate".into())),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_schemes() {
        assert_eq!(
            Endpoint::parse("unix:///run/buildkit/buildkitd.sock").unwrap(),
            Endpoint::Unix(PathBuf::from("/run/buildkit/buildkitd.sock"))
        );
        assert_eq!(
            Endpoint::parse("tcp://buildkitd.kiln-system:1234").unwrap(),
            Endpoint::Tcp {
                host: "buildkitd.kiln-system".into(),
                port: 1234
            }
        );
        assert_eq!(
            Endpoint::parse("tcp://[::1]:1234").unwrap(),
            Endpoint::Tcp {
                host: "::1".into(),
                port: 1234
            }
        );
        assert_eq!(
            Endpoint::parse("docker-unix:///var/run/docker.sock").unwrap(),
            Endpoint::DockerUnix(PathBuf::from("/var/run/docker.sock"))
        );
        assert_eq!(
            Endpoint::parse("docker-unix://").unwrap(),
            Endpoint::DockerUnix(PathBuf::from(DEFAULT_DOCKER_SOCKET))
        );
    }

    #[test]
    fn display_round_trips() {
        for a in [
            "unix:///run/buildkit/buildkitd.sock",
            "tcp://10.0.0.1:1234",
            "tcp://[::1]:1234",
            "docker-unix:///var/run/docker.sock",
        ] {
            assert_eq!(Endpoint::parse(a).unwrap().to_string(), a);
        }
    }

    #[test]
    fn rejects_bad_addresses_with_a_hint() {
        let err = Endpoint::parse("ssh://host").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme \"ssh\""), "{err}");
        assert!(err.contains("docker-unix://"), "{err}");
        for bad in [
            "/run/buildkit/buildkitd.sock",
            "unix://relative.sock",
            "unix://",
            "tcp://host",
            "tcp://host:notaport",
            "tcp://:1234",
            "tcp://host:0",
            "tcp://host:1234/path",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn tls_debug_redacts_the_key() {
        let tls = TlsConfig {
            ca: b"-----BEGIN CERTIFICATE-----".to_vec(),
            cert: Some(b"cert".to_vec()),
            key: Some(b"super-secret-key-material".to_vec()),
            server_name: Some("buildkitd".into()),
        };
        let dbg = format!("{tls:?}");
        assert!(!dbg.contains("super-secret"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn tls_from_files_validates() {
        let dir = std::env::temp_dir().join(format!("kiln-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----\nx\n").unwrap();
        std::fs::write(dir.join("cert.pem"), "-----BEGIN CERTIFICATE-----\ny\n").unwrap();
        // key missing: cert without key is an error
        let err = TlsConfig::from_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("without its key"), "{err}");
        std::fs::write(dir.join("key.pem"), "-----BEGIN PRIVATE KEY-----\nz\n").unwrap();
        let tls = TlsConfig::from_dir(&dir).unwrap();
        assert!(tls.key.is_some());
        std::fs::write(dir.join("ca.pem"), "not pem").unwrap();
        let err = TlsConfig::from_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("not PEM"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
