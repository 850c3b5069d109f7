//! The `tollgate` binary as a user runs it: check-config, keys new, and graceful shutdown
//! on SIGTERM with a stream in flight.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::fake::{chunk, End, Fake, Reply};
use common::sse_data;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

#[test]
fn the_shipped_example_passes_check_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(BIN)
        .current_dir(root)
        .args(["check-config", "--config", "tollgate.example.toml"])
        .env("TOLLGATE_MODEL", "/models/gemma.gguf")
        .env("TOLLGATE_ADMIN_KEY", "a")
        .env("TOLLGATE_DEV_KEY", "d")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("gemma-3-270m"), "{stdout}");
    assert!(stdout.contains("gemma-local [local]"), "{stdout}");
}

#[test]
fn check_config_lists_every_problem_and_fails() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("tollgate.toml"), "listen = \"x\"\nbogus = 1\n").unwrap();
    std::fs::create_dir(d.path().join("routes")).unwrap();
    std::fs::write(
        d.path().join("routes/a.toml"),
        "[[alias]]\nname = \"a\"\n[[alias.deployment]]\nname = \"d\"\nkind = \"openai\"\nbase_url = \"http://h/v1\"\nmodel = \"m\"\napi_key = \"sk-123\"\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("routes/b.toml"),
        "[[alias]]\nname = \"b\"\n[[alias.deployment]]\nname = \"e\"\nkind = \"vllm\"\n",
    )
    .unwrap();
    let out =
        Command::new(BIN).args(["check-config", "--config"]).arg(d.path().join("tollgate.toml")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tollgate.toml") && err.contains("bogus"), "{err}");
    assert!(
        err.contains("a.toml")
            && err.contains("alias[0].deployment[0].api_key")
            && err.contains("environment variable"),
        "{err}"
    );
    assert!(err.contains("b.toml") && err.contains("alias[0].deployment[0].kind"), "{err}");
}

#[test]
fn keys_new_prints_a_key_and_its_config_lines() {
    let out = Command::new(BIN).args(["keys", "new", "--name", "web"]).output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let key = s.lines().next().unwrap().strip_prefix("key:").unwrap().trim().to_owned();
    let hash = s.lines().find_map(|l| l.strip_prefix("sha256 = \"")).unwrap().trim_end_matches('"');
    assert_eq!(hash, tollgate::config::sha256(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>());
    assert!(s.contains("name = \"web\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_stream_finish_then_exits() {
    let release = Arc::new(tokio::sync::Notify::new());
    let fake = Fake::start(vec![Reply::Sse(vec![chunk("Hel"), chunk("lo")], End::Stall(release.clone()))]).await;
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("tollgate.toml"), "shutdown_grace_secs = 1\n[auth]\nopen = true\n").unwrap();
    std::fs::create_dir(d.path().join("routes")).unwrap();
    std::fs::write(
        d.path().join("routes/a.toml"),
        common::openai_route("chat", "up", &fake.base(), "m", "stall_timeout_ms = 60000"),
    )
    .unwrap();
    let (mut child, addr) = common::serve_binary(d.path());
    let client = reqwest::Client::new();
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let mut r = client.post(format!("http://{addr}/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("Hel"));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // The stream stays open through the grace period, then ends with an OpenAI-shaped event.
    let mut rest = String::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    let last = sse_data(&rest).pop().unwrap();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["error"]["code"], "shutting_down", "{rest}");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success());
    assert!(
        client.get(format!("http://{addr}/health")).timeout(Duration::from_secs(2)).send().await.is_err(),
        "no longer accepting"
    );
}

#[test]
fn serve_raises_its_open_file_limit_to_the_hard_limit() {
    use std::os::unix::process::CommandExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("tollgate.toml"), "[auth]\nopen = true\n").unwrap();
    std::fs::create_dir(d.path().join("routes")).unwrap();
    std::fs::write(d.path().join("routes/a.toml"), common::openai_route("chat", "up", "http://127.0.0.1:9", "m", ""))
        .unwrap();
    // The child starts with the common soft limit of 256 under whatever hard limit this has.
    let (mut child, _addr) = common::serve_binary_with(d.path(), |cmd| unsafe {
        cmd.pre_exec(|| {
            let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
            l.rlim_cur = l.rlim_max.min(256);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            Ok(())
        });
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums[0], nums[1], "soft = hard once serving: {line}");
}

/// One request on a new connection: what came back until the gateway closed it or the
/// answer's head and a little more arrived (`None`: no answer within the bound).
fn ask_health(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let _ = c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match c.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !got.is_empty() => break,
            Err(_) => return None,
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// 1,100 silent connections to a gateway held to 1,024 open files: a new client gets a 503
/// at once (not a stalled accept); once the header timeout has closed the silent ones, it is
/// served again.
#[test]
fn eleven_hundred_silent_connections_under_1024_open_files_get_a_503_not_a_stall() {
    use std::os::unix::process::CommandExt;
    // This process holds the 1,100 connections: its own soft limit goes to its hard limit.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        if l.rlim_max < 1400 {
            panic!("this test needs a hard open-file limit of 1,400 (have {})", l.rlim_max);
        }
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("tollgate.toml"), "header_read_timeout_ms = 15000\n[auth]\nopen = true\n").unwrap();
    std::fs::create_dir(d.path().join("routes")).unwrap();
    std::fs::write(d.path().join("routes/a.toml"), common::openai_route("chat", "up", "http://127.0.0.1:9", "m", ""))
        .unwrap();
    // The gateway starts with 1,024 open files, soft and hard: it cannot raise them.
    let (mut child, addr) = common::serve_binary_with(d.path(), |cmd| unsafe {
        cmd.pre_exec(|| {
            let l = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            Ok(())
        });
    });
    let silent: Vec<std::net::TcpStream> =
        (0..1100).map(|_| std::net::TcpStream::connect(&addr).expect("the gateway accepts")).collect();
    let during = ask_health(&addr).expect("an answer, not a stall");
    assert!(during.starts_with("HTTP/1.1 503"), "{during}");
    assert!(during.contains("\"too_many_connections\""), "{during}");
    // Each silent connection the gateway took is closed by the header timeout; the rest were
    // answered 503 and closed at once.
    for mut s in silent {
        use std::io::Read;
        s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut sink = Vec::new();
        let closed = match s.read_to_end(&mut sink) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "every silent connection is closed");
        assert!(sink.is_empty() || sink.starts_with(b"HTTP/1.1 503"), "{}", String::from_utf8_lossy(&sink));
    }
    let served = (0..1000).find_map(|_| ask_health(&addr).filter(|a| a.starts_with("HTTP/1.1 200")));
    let _ = child.kill();
    let _ = child.wait();
    assert!(served.is_some(), "served again once the silent connections are gone");
}
