//! A real headless Chromium, driven over the DevTools protocol, for testing
//! the dashboard as a browser runs it: the page's own scripts fetch, render
//! and update it, and the test only reads the DOM.
//!
//! Chromium is found as `$RAMPART_CHROMIUM`, `chromium`, `chromium-browser`
//! or `google-chrome` (`.ci/run` installs Debian's `chromium`).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

pub struct Browser {
    process: Child,
    socket: WebSocket<TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `url` and connects to that page.
    pub fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("a profile directory");
        let binary = chromium();
        let process = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        // Chromium writes the port it chose into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let port: u16 = poll("Chromium's DevTools port", || {
            std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse().ok())
        });
        let page: String = poll("the page target", || {
            let (_, body) = crate::http_get(([127, 0, 0, 1], port).into(), "/json/list");
            let list: Value = serde_json::from_str(&body).ok()?;
            list.as_array()?
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                .map(str::to_string)
        });
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let (socket, _) = tungstenite::client(page.as_str(), stream).expect("DevTools handshake");
        Browser {
            process,
            socket,
            next_id: 1,
            _profile: profile,
        }
    }

    /// Evaluates `expression` in the page; returns its value (JSON-able).
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        if let Some(error) = result.get("exceptionDetails") {
            panic!("`{expression}` threw: {error}");
        }
        result["result"]["value"].clone()
    }

    /// The page as a PNG, `width` x `height` CSS pixels.
    pub fn screenshot(&mut self, width: u32, height: u32) -> Vec<u8> {
        use base64::Engine;
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let data = shot["data"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("screenshot base64")
    }

    /// One DevTools command; its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let call = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(call.to_string()))
            .expect("send to DevTools");
        loop {
            let message = self.socket.read().expect("read from DevTools");
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if reply["id"] != id {
                continue; // an event, not our answer
            }
            if let Some(error) = reply.get("error") {
                panic!("DevTools {method} failed: {error}");
            }
            return reply["result"].clone();
        }
    }

    /// Waits until `expression` is true in the page, returning what
    /// `describe` evaluates to when it is not, for the panic message.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, expression: &str, describe: &str) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.eval(expression) == Value::Bool(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out waiting for {what}; the page shows: {}",
            self.eval(describe)
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn chromium() -> String {
    if let Ok(path) = std::env::var("RAMPART_CHROMIUM") {
        return path;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return name.to_string();
        }
    }
    panic!("no Chromium found: apt-get install -y chromium, or set RAMPART_CHROMIUM");
}

/// Polls `f` for up to 30 s.
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
