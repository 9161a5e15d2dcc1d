//! Helpers for the tests of how the CLI connects and of the dev setup:
//! the real binary run with a clean environment, a port that accepts and
//! never answers, a TLS server that never answers a call.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::process::{output_within, BIN};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// The environment variables the CLI reads: removed from every command
/// these helpers run, so the test's own environment cannot steer it.
pub const CLI_ENV: &[&str] = &[
    "FIELDVAULT_ADDR",
    "FIELDVAULT_DATA_DIR",
    "FIELDVAULT_CONNECT_TIMEOUT",
    "FIELDVAULT_TIMEOUT",
    "RUST_LOG",
];

/// Runs the CLI in `cwd` with `args` and `env` (and none of [`CLI_ENV`]
/// otherwise), killed past `deadline`.
pub fn cli_in(cwd: &Path, args: &[&str], env: &[(&str, &str)], deadline: Duration) -> Output {
    let mut command = Command::new(BIN);
    command.current_dir(cwd).args(args);
    for k in CLI_ENV {
        command.env_remove(k);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    output_within(command, deadline)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An address on 127.0.0.1 that nothing listens on (bound, then closed).
pub fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    addr
}

/// A port on 127.0.0.1 that accepts TCP connections and never sends a
/// byte (the connections are held open for `hold`, then dropped).
pub fn silent_port(hold: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut held = Vec::new();
        while started.elapsed() < hold {
            match listener.accept() {
                Ok((socket, _)) => held.push(socket),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    addr
}

/// How a test server answers a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Never: no headers, no body.
    Never,
    /// `:status 200` and the gRPC content type, then nothing.
    HeadersThenStall,
    /// The headers, then one body byte a second (a gRPC message that
    /// never completes).
    HeadersThenTrickle,
    /// Not a word after the TLS handshake, HTTP/2 preface or not.
    Silent,
    /// The headers, then a gRPC message announced as 1 MiB (far more
    /// than any health answer) whose body never comes.
    HeadersThenLarge,
    /// Like an HTTP/2 front end that speaks only after the client's
    /// preface: nothing until it has read it, then HTTP/2, never
    /// answering a call.
    AfterPrefaceNever,
}

/// An mTLS server (the vault's own TLS settings, certificates of `pki_dir`)
/// that completes the handshake and HTTP/2, accepts calls and never
/// answers them. Runs on the current tokio runtime until it is dropped.
pub async fn unanswering_server(pki_dir: &Path) -> String {
    stalling_server(pki_dir, Answer::Never).await
}

/// Like [`unanswering_server`], answering each call as `answer` says and
/// never finishing it.
pub async fn stalling_server(pki_dir: &Path, answer: Answer) -> String {
    let (config, _) = fieldvault::tls_reload::load(&fieldvault::tls_reload::TlsSources {
        cert: pki_dir.join("server.pem"),
        key: pki_dir.join("server.key"),
        client_ca: pki_dir.join("ca.pem"),
        crls: Vec::new(),
        crls_may_be_missing: false,
        min_version: fieldvault::config::TlsMinVersion::Tls13,
    })
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if answer == Answer::Silent {
                    // Reads (and drops) whatever comes, for at most a minute.
                    let mut sink = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_secs(60), async {
                        while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
                    })
                    .await;
                    return;
                }
                let mut preface = Vec::new();
                if answer == Answer::AfterPrefaceNever {
                    // The client's preface first (24 bytes), then replayed
                    // in front of the stream for h2.
                    preface = vec![0u8; 24];
                    if tls.read_exact(&mut preface).await.is_err() {
                        return;
                    }
                }
                let (read, write) = tokio::io::split(tls);
                let stream = tokio::io::join(std::io::Cursor::new(preface).chain(read), write);
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                // Calls are accepted and held, never finished.
                let mut held = Vec::new();
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    if matches!(answer, Answer::Never | Answer::AfterPrefaceNever) {
                        held.push((request, respond));
                        continue;
                    }
                    let headers = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let Ok(mut body) = respond.send_response(headers, false) else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let _request = request;
                        // A 5-byte gRPC prefix announcing 100 bytes, then
                        // (trickling) a byte a second; at most a minute.
                        let mut prefix = Some(if answer == Answer::HeadersThenLarge {
                            bytes::Bytes::from_static(&[0, 0, 0x10, 0, 0])
                        } else {
                            bytes::Bytes::from_static(&[0, 0, 0, 0, 100])
                        });
                        if answer == Answer::HeadersThenLarge {
                            if let Some(prefix) = prefix.take() {
                                if body.send_data(prefix, false).is_err() {
                                    return;
                                }
                            }
                        }
                        for _ in 0..60 {
                            if answer == Answer::HeadersThenTrickle {
                                let chunk = prefix
                                    .take()
                                    .unwrap_or_else(|| bytes::Bytes::from_static(&[0]));
                                if body.send_data(chunk, false).is_err() {
                                    return;
                                }
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    });
                }
            });
        }
    });
    addr
}

/// A TCP relay to `upstream` that holds back what the server sends once
/// the client has spoken a second time (after the server's first flight:
/// in TLS 1.3, the client's certificate and Finished) for `delay`: the
/// server's verdict on our certificate (its alert, or its first HTTP/2
/// bytes) comes late, as from a slow or distant server. Runs on the
/// current tokio runtime; each connection lasts at most a minute.
pub async fn slow_verdict_relay(upstream: String, delay: Duration) -> String {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_rd, mut client_wr) = client.into_split();
                let (mut server_rd, mut server_wr) = server.into_split();
                let server_spoke = Arc::new(AtomicBool::new(false));
                let client_answered = Arc::new(AtomicBool::new(false));
                let up = {
                    let (server_spoke, client_answered) =
                        (server_spoke.clone(), client_answered.clone());
                    async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = client_rd.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            // Set before the bytes reach the server: its
                            // answer to them is read after this.
                            if server_spoke.load(Ordering::SeqCst) {
                                client_answered.store(true, Ordering::SeqCst);
                            }
                            if server_wr.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_wr.shutdown().await;
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut delayed = false;
                    while let Ok(n) = server_rd.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if !delayed && client_answered.load(Ordering::SeqCst) {
                            delayed = true;
                            tokio::time::sleep(delay).await;
                        }
                        server_spoke.store(true, Ordering::SeqCst);
                        if client_wr.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_wr.shutdown().await;
                };
                let _ =
                    tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(up, down) })
                        .await;
            });
        }
    });
    addr
}
