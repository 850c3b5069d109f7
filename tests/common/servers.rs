//! Real Redis and PostgreSQL servers for the cluster tests: Debian's binaries (installed by
//! `scripts/setup.sh --servers`), each on a free loopback port with a temporary directory,
//! killed when the thread that started them ends (the test). PostgreSQL refuses to run as
//! root, so under root it runs as the `postgres` user (or `nobody`). And nginx, as a reverse
//! proxy in front of a gateway ([`nginx`]).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

fn killed_with_parent(cmd: &mut Command) -> &mut Command {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis { port: free_port(), child: None, dir: tempfile::tempdir().unwrap() };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        let bin = std::env::var("TOLLGATE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = killed_with_parent(Command::new(&bin).args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ]))
        .arg(self.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin} (run the tests through scripts/test.sh): {e}"));
        self.child = Some(child);
        wait_port(self.port, "redis-server");
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A connection for the test's own checks.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Postgres {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<(u32, u32)>,
}

impl Postgres {
    /// initdb, start, and create the `tollgate` database owned by the `tollgate` role.
    pub fn start() -> Postgres {
        let bin = PathBuf::from(
            std::env::var("TOLLGATE_POSTGRES_BIN")
                .expect("TOLLGATE_POSTGRES_BIN is not set: run the tests through scripts/test.sh"),
        );
        let dir = tempfile::tempdir().unwrap();
        // Root may not run PostgreSQL: run it as an unprivileged user owning the directory.
        let user = (unsafe { libc::geteuid() } == 0).then(|| {
            let name = if unsafe { !libc::getpwnam(c"postgres".as_ptr()).is_null() } { c"postgres" } else { c"nobody" };
            let pw = unsafe { &*libc::getpwnam(name.as_ptr()) };
            (pw.pw_uid, pw.pw_gid)
        });
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut pg = Postgres { port: free_port(), child: None, dir, bin, user };
        let data = pg.data();
        let out = pg
            .command("initdb")
            .args(["-D", &data, "-U", "tollgate", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        pg.restart();
        let out = pg
            .command("createdb")
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "tollgate", "tollgate"])
            .output()
            .unwrap();
        assert!(out.status.success(), "createdb: {}", String::from_utf8_lossy(&out.stderr));
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        c
    }

    pub fn url(&self) -> String {
        format!("postgres://tollgate@127.0.0.1:{}/tollgate", self.port)
    }

    /// Starts the server on its port, with its data (after [`Postgres::stop`]).
    pub fn restart(&mut self) {
        let (data, port, sock) = (self.data(), self.port.to_string(), self.dir.path().display().to_string());
        let mut cmd = self.command("postgres");
        cmd.args(["-D", &data, "-p", &port, "-k", &sock, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(killed_with_parent(&mut cmd).spawn().expect("start postgres"));
        wait_port(self.port, "postgres");
        // Listening is not accepting: wait until a session can start.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self
                .command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "tollgate", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not accept connections");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A fast shutdown (SIGINT), waited for.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// nginx's master, stopped with SIGTERM when the test ends (it stops its workers; a SIGKILL
/// would orphan them).
pub struct Stopped(pub Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Debian's nginx running the configuration `conf` (in its own temporary directory, its
/// output to nowhere, so no worker holds the test's pipes), checked with `nginx -t` first.
pub fn nginx(conf: &str) -> (Stopped, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let prefix = format!("{}/", dir.path().display());
    let globals = format!("pid {prefix}nginx.pid; error_log stderr;");
    let run = |extra: &[&str]| {
        let mut c = Command::new("nginx");
        c.args(["-p", &prefix, "-c"]).arg(&conf_path).args(extra);
        c
    };
    let t = run(&["-t", "-g", &globals]).output().expect("nginx (scripts/setup.sh --servers installs it)");
    assert!(t.status.success(), "nginx -t: {}", String::from_utf8_lossy(&t.stderr));
    let daemon = format!("{globals} daemon off;");
    let child = run(&["-g", &daemon]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    (Stopped(child), dir)
}
