#![allow(clippy::unwrap_used, clippy::print_stdout)]
//! The official `openai` Python SDK against `tollgate serve --model <the test GGUF>`, the
//! zero-config start a new user runs: tool calls, structured output, logprobs, `n`,
//! `logit_bias` (each check in `tests/sdk/engine_surface.py`, one test here per check). One
//! gateway process serves every test of this binary; the SDK is installed by
//! `scripts/setup.sh` from `tests/sdk/requirements.txt`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

struct Served {
    url: String,
    _dir: tempfile::TempDir,
}

fn served() -> &'static Served {
    static S: OnceLock<Served> = OnceLock::new();
    S.get_or_init(|| {
        let model = std::env::var("TOLLGATE_TEST_MODEL")
            .expect("TOLLGATE_TEST_MODEL must name the test GGUF (scripts/setup.sh prints it)");
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().to_owned();
        // Spawned from a thread that lives as long as the tests: PR_SET_PDEATHSIG (the death
        // of the spawning thread) ends the gateway exactly when the test binary ends.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
            cmd.current_dir(cwd)
                .args(["serve", "--model", &model, "--listen", "127.0.0.1:0"])
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let addr = loop {
                let line = lines.next().expect("the gateway exited before listening").unwrap();
                if let Some(i) = line.find("listening on http://") {
                    break line[i + "listening on http://".len()..].split_whitespace().next().unwrap().to_owned();
                }
            };
            tx.send(addr).unwrap();
            for _ in lines {}
            let _ = child.wait();
        });
        let addr = rx.recv().expect("the gateway started");
        Served { url: format!("http://{addr}"), _dir: dir }
    })
}

fn check(name: &str) {
    let s = served();
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/engine_surface.py"))
        .args([&s.url, name])
        .output()
        .expect("python3 runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "the SDK check {name} failed:\n{text}");
    assert!(text.contains(&format!("check {name} ... ok")), "{text}");
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => { $( #[test] fn $name() { check(stringify!($name)); } )* };
}

checks!(
    tool_required,
    tool_named,
    tool_streamed,
    tool_followup,
    tool_truncated,
    json_schema,
    json_object,
    parse_pydantic,
    logprobs,
    n_choices,
    logit_bias,
    bad_input,
);
