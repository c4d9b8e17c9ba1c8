//! A fault-injecting TCP forwarder: sits in front of a node and passes
//! bytes both ways until told to misbehave. The kernel's netem is not
//! available in the test environment, so partitions are made here.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the forwarder does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass = 0,
    /// Accept connections and bytes but deliver nothing, either way: a
    /// network partition as the endpoints see it (silence, not errors).
    Blackhole = 1,
    /// Close every connection at once, and each new one as it arrives.
    Reset = 2,
    /// Deliver each chunk after a delay.
    Delay = 3,
    /// Close each new connection as it arrives; those open go on (a node
    /// at its connection limit, or going down, as a newcomer sees it).
    RefuseNew = 4,
    /// Connections open when it is set deliver nothing until it is lifted,
    /// then everything they carried, even what their sender sent before
    /// closing; connections opened meanwhile pass (one flow stalled in the
    /// network while others go on).
    HoldOpen = 5,
}

pub struct Forwarder {
    pub port: u16,
    fault: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
    /// Bumped by `set(Reset)`: connections older than the bump close.
    generation: Arc<AtomicU64>,
    /// Bumped by `set(HoldOpen)`: connections older than the bump hold.
    held: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Forwarder {
    /// Forwards a free loopback port to `target_port`.
    pub fn start(target_port: u16) -> Forwarder {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("forwarder runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind forwarder");
        let port = listener.local_addr().expect("forwarder addr").port();
        let fault = Arc::new(AtomicU8::new(Fault::Pass as u8));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let generation = Arc::new(AtomicU64::new(0));
        let held = Arc::new(AtomicU64::new(0));
        let state = Shared {
            held: held.clone(),
            fault: fault.clone(),
            delay_ms: delay_ms.clone(),
            generation: generation.clone(),
        };
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    match state.fault() {
                        Fault::Reset => return reset(client),
                        Fault::RefuseNew => return drop(client),
                        _ => {}
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                        return;
                    };
                    let born = Born {
                        generation: state.generation.load(Ordering::Acquire),
                        held: state.held.load(Ordering::Acquire),
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (crd, cwr) = client.into_split();
                    let (srd, swr) = server.into_split();
                    tokio::select! {
                        _ = pump(crd, swr, &state, born) => {}
                        _ = pump(srd, cwr, &state, born) => {}
                    }
                });
            }
        });
        Forwarder {
            port,
            fault,
            delay_ms,
            generation,
            held,
            runtime: Some(runtime),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set(&self, fault: Fault) {
        if fault == Fault::Reset {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        if fault == Fault::HoldOpen {
            self.held.fetch_add(1, Ordering::AcqRel);
        }
        self.fault.store(fault as u8, Ordering::Release);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Release);
        self.set(Fault::Delay);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Clone)]
struct Shared {
    fault: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
    held: Arc<AtomicU64>,
}

/// When a connection was opened, by the counters of `Reset` and `HoldOpen`.
#[derive(Clone, Copy)]
struct Born {
    generation: u64,
    held: u64,
}

impl Shared {
    fn fault(&self) -> Fault {
        match self.fault.load(Ordering::Acquire) {
            1 => Fault::Blackhole,
            2 => Fault::Reset,
            3 => Fault::Delay,
            4 => Fault::RefuseNew,
            5 => Fault::HoldOpen,
            _ => Fault::Pass,
        }
    }
}

/// Copies one direction, applying the fault in force to each chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: &Shared,
    born: Born,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            // Notice a reset even on an idle connection.
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if state.generation.load(Ordering::Acquire) != born.generation {
                    return;
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.generation.load(Ordering::Acquire) != born.generation {
            return;
        }
        match state.fault() {
            Fault::HoldOpen if born.held < state.held.load(Ordering::Acquire) => {
                while state.fault() == Fault::HoldOpen {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Fault::Pass | Fault::RefuseNew | Fault::HoldOpen => {}
            Fault::Blackhole => continue,
            Fault::Reset => return,
            Fault::Delay => {
                let ms = state.delay_ms.load(Ordering::Acquire);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Closes a connection with a TCP reset rather than an orderly close.
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}
