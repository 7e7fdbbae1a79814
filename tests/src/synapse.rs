//! A real Synapse homeserver for the Matrix notification tests: `matrix-synapse` from PyPI in
//! a cached virtualenv (`${HYPERLOOP_TOOLS:-$HOME/.cache/hyperloop-tools}/synapse/venv`,
//! installed on first use and by `tests/setup`), configured for server name `localhost` on a
//! free loopback port with sqlite, registration by token only, a shared secret (which makes
//! the admin that creates the registration token), no key servers and lifted rate limits.
//! Killed on drop. Anything that keeps it from running fails the test: nothing is skipped.
//!
//! Requests go through the virtualenv's own Python (`urllib`), so the tests need no HTTP
//! client of their own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const SHARED_SECRET: &str = "hyperloop-test-shared-secret";
const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "admin-password";
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// Sends one request and prints `{"status": N, "body": ...}` (a body that is not JSON as a
/// string); argv: method url token body.
const REQUEST_PY: &str = r#"
import json, sys, urllib.request, urllib.error
method, url, token, body = sys.argv[1:5]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
req.add_header("Content-Type", "application/json")
if token:
    req.add_header("Authorization", "Bearer " + token)
try:
    with urllib.request.urlopen(req, timeout=20) as r:
        status, text = r.status, r.read().decode()
except urllib.error.HTTPError as e:
    status, text = e.code, e.read().decode()
try:
    parsed = json.loads(text) if text else None
except ValueError:
    parsed = text
print(json.dumps({"status": status, "body": parsed}))
"#;

/// Registers an admin through the shared-secret admin API; argv: base secret user password.
const ADMIN_PY: &str = r#"
import hashlib, hmac, json, sys, urllib.request
base, secret, user, password = sys.argv[1:5]
url = base + "/_synapse/admin/v1/register"
nonce = json.load(urllib.request.urlopen(url))["nonce"]
digest = hmac.new(secret.encode(), "\x00".join([nonce, user, password, "admin"]).encode(), hashlib.sha1).hexdigest()
body = json.dumps({"nonce": nonce, "username": user, "password": password, "admin": True, "mac": digest}).encode()
req = urllib.request.Request(url, data=body, method="POST")
req.add_header("Content-Type", "application/json")
print(urllib.request.urlopen(req).read().decode())
"#;

pub struct Synapse {
    child: Option<Child>,
    python: PathBuf,
    config: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// A registration token (unlimited uses) for bots to register with.
    pub registration_token: String,
    /// `@admin:localhost`.
    pub admin_user: String,
    admin_token: String,
    _dir: tempfile::TempDir,
}

/// The virtualenv's Python with `matrix-synapse` installed, installing it once if needed.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let tools = std::env::var_os("HYPERLOOP_TOOLS").map_or_else(
            || {
                let home = std::env::var_os("HOME").expect("HOME is set");
                PathBuf::from(home).join(".cache/hyperloop-tools")
            },
            PathBuf::from,
        );
        let venv = tools.join("synapse/venv");
        let python = venv.join("bin/python");
        let installed = |python: &Path| {
            Command::new(python)
                .args(["-c", "import synapse"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !installed(&python) {
            std::fs::create_dir_all(&tools).expect("create the tools directory");
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("python3 (with venv) is needed to run Synapse");
            assert!(made.success(), "python3 -m venv {} failed", venv.display());
            let pip = Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "matrix-synapse"])
                .status()
                .expect("run pip");
            assert!(pip.success(), "pip install matrix-synapse failed");
        }
        assert!(installed(&python), "matrix-synapse is not importable");
        python
    })
}

impl Synapse {
    /// Starts a fresh homeserver and waits until it serves, with an admin and a registration
    /// token made.
    pub fn start() -> Synapse {
        let python = python().to_path_buf();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let port = crate::free_port();
        let limit = "{per_second: 1000, burst_count: 1000}";
        let config = format!(
            "server_name: localhost\n\
             pid_file: {d}/homeserver.pid\n\
             listeners:\n\
             \x20 - port: {port}\n\
             \x20   bind_addresses: ['127.0.0.1']\n\
             \x20   type: http\n\
             \x20   tls: false\n\
             \x20   x_forwarded: false\n\
             \x20   resources: [{{names: [client], compress: false}}]\n\
             database: {{name: sqlite3, args: {{database: {d}/homeserver.db}}}}\n\
             media_store_path: {d}/media\n\
             signing_key_path: {d}/signing.key\n\
             report_stats: false\n\
             trusted_key_servers: []\n\
             suppress_key_server_warning: true\n\
             enable_registration: true\n\
             registration_requires_token: true\n\
             registration_shared_secret: {SHARED_SECRET}\n\
             default_room_version: \"11\"\n\
             rc_message: {limit}\n\
             rc_registration: {limit}\n\
             rc_login: {{address: {limit}, account: {limit}, failed_attempts: {limit}}}\n\
             rc_joins: {{local: {limit}, remote: {limit}}}\n\
             rc_invites: {{per_room: {limit}, per_user: {limit}}}\n"
        );
        let config_path = dir.path().join("homeserver.yaml");
        std::fs::write(&config_path, config).expect("write homeserver.yaml");
        let keys = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--generate-keys", "-c"])
            .arg(&config_path)
            .current_dir(dir.path())
            .output()
            .expect("run synapse --generate-keys");
        assert!(
            keys.status.success(),
            "synapse --generate-keys failed: {}",
            String::from_utf8_lossy(&keys.stderr)
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut synapse = Synapse {
            child: None,
            python,
            config: config_path,
            url,
            registration_token: String::new(),
            admin_user: format!("@{ADMIN}:localhost"),
            admin_token: String::new(),
            _dir: dir,
        };
        synapse.run();
        let made = Command::new(&synapse.python)
            .args([
                "-c",
                ADMIN_PY,
                &synapse.url,
                SHARED_SECRET,
                ADMIN,
                ADMIN_PASSWORD,
            ])
            .output()
            .expect("register the admin");
        assert!(
            made.status.success(),
            "cannot register the admin: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let admin: Value = serde_json::from_slice(&made.stdout).expect("admin JSON");
        synapse.admin_token = admin["access_token"]
            .as_str()
            .expect("admin token")
            .to_owned();
        let token = synapse.admin(
            "POST",
            "/_synapse/admin/v1/registration_tokens/new",
            Some(json!({})),
        );
        synapse.registration_token = token["token"].as_str().expect("token").to_owned();
        synapse
    }

    /// Starts the homeserver on its port and data and waits until it serves.
    fn run(&mut self) {
        let dir = self._dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("synapse.log"))
            .expect("log file");
        let child = Command::new(&self.python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&self.config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start synapse");
        self.child = Some(child);
        self.wait_healthy();
    }

    /// Starts a killed homeserver again, with what it had stored (the end of an outage).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "Synapse is still running");
        self.run();
    }

    fn wait_healthy(&mut self) {
        let started = Instant::now();
        loop {
            let health = self.request("GET", "/health", None, None);
            if health["status"] == 200 {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > HEALTHY_WITHIN {
                let log = std::fs::read_to_string(self._dir.path().join("synapse.log"))
                    .unwrap_or_default();
                panic!("Synapse did not become healthy ({exited:?}):\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One request; returns `{"status": N, "body": JSON or null}` (status 0: unreachable).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let out = Command::new(&self.python)
            .args(["-c", REQUEST_PY, method])
            .arg(format!("{}{path}", self.url))
            .arg(token.unwrap_or(""))
            .arg(body.map(|b| b.to_string()).unwrap_or_default())
            .output()
            .expect("run python");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| json!({"status": 0, "body": null}))
    }

    /// A request as the admin; panics unless it succeeds, returning the body.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let reply = self.request(method, path, Some(&self.admin_token), body);
        assert_eq!(reply["status"], 200, "{method} {path}: {reply}");
        reply["body"].clone()
    }

    /// A new ordinary user `@name:localhost` (made through the admin API) and an access
    /// token for it.
    pub fn user(&self, name: &str) -> (String, String) {
        let user_id = format!("@{name}:localhost");
        let password = format!("{name}-password");
        let reply = self.request(
            "PUT",
            &format!("/_synapse/admin/v2/users/{}", user_id.replace(':', "%3A")),
            Some(&self.admin_token),
            Some(json!({"password": password})),
        );
        assert_eq!(reply["status"], 201, "create {user_id}: {reply}");
        let login = self.request(
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": password,
            })),
        );
        assert_eq!(login["status"], 200, "log in {user_id}: {login}");
        let token = login["body"]["access_token"].as_str().expect("token");
        (user_id, token.to_owned())
    }

    /// Every `m.room.message` in `room`, oldest first (through the admin API, so the admin
    /// need not be a member).
    pub fn messages(&self, room: &str) -> Vec<Value> {
        let room = room.replace('!', "%21").replace(':', "%3A");
        let page = self.admin(
            "GET",
            &format!("/_synapse/admin/v1/rooms/{room}/messages?dir=f&limit=1000"),
            None,
        );
        page["chunk"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["type"] == "m.room.message")
            .collect()
    }

    /// Stops the homeserver now (a Matrix outage).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        self.kill();
    }
}
