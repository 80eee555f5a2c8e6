//! Tests of following a solve's progress: vertices, logs and their tails.

use super::*;
use bollard_buildkit_proto::moby::buildkit::v1::{Vertex, VertexLog};

fn ts(ms: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: 1_700_000_000 + ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

fn vx(d: &str, name: &str, started: Option<i64>, completed: Option<i64>) -> Vertex {
    Vertex {
        digest: d.into(),
        name: name.into(),
        started: started.and_then(ts),
        completed: completed.and_then(ts),
        ..Default::default()
    }
}

#[test]
fn a_restarted_step_does_not_make_the_summary_go_back() {
    let mut t = Tracker::new(Redactor::new(Vec::<&[u8]>::new()));
    let step = |t: &mut Tracker, started, completed| {
        t.apply(StatusResponse {
            vertexes: vec![vx("a", "[1/1] FROM x", started, completed)],
            ..Default::default()
        });
        t.summary().completed
    };
    assert_eq!(step(&mut t, Some(0), Some(10)), 1);
    // BuildKit resolves a FROM in the local store, then runs the vertex again.
    assert_eq!(step(&mut t, Some(20), None), 1, "restarted: still counted as done");
    assert_eq!(step(&mut t, Some(20), Some(30)), 1);
}

#[test]
fn events_logs_and_rendering() {
    let mut t = Tracker::new(Redactor::new([b"topsecret".as_slice()]));
    let mut all = Vec::new();
    all.extend(t.apply(StatusResponse {
        vertexes: vec![
            vx("a", "[1/2] FROM x", None, None),
            vx("b", "[2/2] RUN echo", None, None),
        ],
        ..Default::default()
    }));
    all.extend(t.apply(StatusResponse {
        vertexes: vec![vx("a", "[1/2] FROM x", Some(0), Some(100))],
        ..Default::default()
    }));
    all.extend(t.apply(StatusResponse {
        vertexes: vec![vx("b", "[2/2] RUN echo", Some(100), None)],
        logs: vec![
            VertexLog {
                vertex: "b".into(),
                stream: 1,
                msg: b"hello topsec".to_vec(),
                ..Default::default()
            },
            VertexLog {
                vertex: "b".into(),
                stream: 1,
                msg: b"ret\npartial".to_vec(),
                ..Default::default()
            },
        ],
        ..Default::default()
    }));
    all.extend(t.apply(StatusResponse {
        vertexes: vec![vx("b", "[2/2] RUN echo", Some(100), Some(1300))],
        ..Default::default()
    }));
    let logs: Vec<&str> = all
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::Log { line, .. } => Some(line.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(logs, vec!["hello ****", "partial"]);
    let last = all
        .iter()
        .rev()
        .find_map(|e| match e {
            ProgressEvent::Progress(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!((last.total, last.completed, last.cached), (2, 2, 0));
    assert_eq!(t.span(), Some(Duration::from_millis(1300)));

    let mut r = PlainRenderer::new();
    let text: Vec<String> = all.iter().flat_map(|e| r.render(e)).collect();
    assert_eq!(
        text,
        vec![
            "#1 [1/2] FROM x",
            "#1 DONE 0.1s",
            "",
            "#2 [2/2] RUN echo",
            "#2 hello ****",
            "#2 partial",
            "#2 DONE 1.2s",
        ]
    );
}

#[test]
fn cached_and_failed_steps() {
    let mut t = Tracker::new(Redactor::default());
    let mut c = vx("a", "[1/2] COPY x /", Some(0), Some(0));
    c.cached = true;
    let mut f = vx("b", "[2/2] RUN exit 3", Some(0), Some(10));
    f.error = "executor failed running [/bin/sh -c exit 3]: exit code: 3".into();
    let mut other = vx("c", "[other 1/1] RUN sleep 1", Some(0), Some(10));
    other.error = "context canceled".into();
    let ev = t.apply(StatusResponse {
        vertexes: vec![c, other, f],
        ..Default::default()
    });
    assert!(ev.contains(&ProgressEvent::StepCompleted {
        step: 1,
        name: "[1/2] COPY x /".into(),
        cached: true,
        duration: Some(Duration::ZERO)
    }));
    let failed = t.failed_step().unwrap();
    assert_eq!(failed.name, "[2/2] RUN exit 3");
    let mut r = PlainRenderer::new();
    let text: Vec<String> = ev.iter().flat_map(|e| r.render(e)).collect();
    assert!(text.contains(&"#1 CACHED".to_string()), "{text:?}");
    assert!(text.contains(&"#2 CANCELED".to_string()), "{text:?}");
    assert!(
        text.iter().any(|l| l.starts_with("#3 ERROR: executor failed")),
        "{text:?}"
    );
}

#[test]
fn log_tail_keeps_the_last_twenty_lines() {
    let mut t = Tracker::new(Redactor::default());
    let mut msg = Vec::new();
    for i in 0..30 {
        msg.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    let mut f = vx("b", "RUN x", Some(0), None);
    t.apply(StatusResponse {
        vertexes: vec![f.clone()],
        logs: vec![VertexLog {
            vertex: "b".into(),
            stream: 2,
            msg,
            ..Default::default()
        }],
        ..Default::default()
    });
    f.completed = ts(5);
    f.error = "boom".into();
    t.apply(StatusResponse {
        vertexes: vec![f],
        ..Default::default()
    });
    let s = t.failed_step().unwrap();
    assert_eq!(s.log_tail.len(), LOG_TAIL_LINES);
    assert_eq!(s.log_tail[0], "line 10");
    assert_eq!(s.log_tail[19], "line 29");
}
