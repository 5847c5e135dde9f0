//! A misbehaving HTTP/1.1 peer on 127.0.0.1 for tests of the network clients' timeouts: one
//! that accepts and never answers, one that sends a body slowly or stops half way, one that
//! does not read an upload, or reads it slowly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the peer does with one request (chosen from its method and path).
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// Reads the request head, then neither reads nor writes; the connection stays open.
    Nothing,
    /// Answers `status` with `body`, `piece` bytes at a time, `gap` apart; stops sending (the
    /// connection open) after `stall_after` bytes when given.
    Body {
        status: u16,
        body: Vec<u8>,
        piece: usize,
        gap: Duration,
        stall_after: Option<usize>,
    },
    /// Reads the request body (`Content-Length`) `piece` bytes at a time, `gap` apart, then
    /// answers `status` with no body.
    ReadSlowly {
        status: u16,
        piece: usize,
        gap: Duration,
    },
}

impl Reply {
    /// `status` with `body`, all at once.
    pub(crate) fn now(status: u16, body: &[u8]) -> Reply {
        Reply::Body {
            status,
            body: body.to_vec(),
            piece: body.len().max(1),
            gap: Duration::ZERO,
            stall_after: None,
        }
    }
}

/// A running peer.
pub(crate) struct Peer {
    /// `127.0.0.1:PORT`.
    pub(crate) addr: String,
    /// Connections accepted so far.
    pub(crate) connections: Arc<AtomicUsize>,
}

/// A peer that accepts connections and never reads or writes a byte.
pub(crate) async fn silent() -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(sock);
        }
    });
    Peer { addr, connections }
}

/// A peer answering each request as `route(method, path)` says.
pub(crate) async fn serve(route: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let route = Arc::new(route);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let route = route.clone();
            tokio::spawn(async move {
                let _ = handle(sock, &*route).await;
            });
        }
    });
    Peer { addr, connections }
}

async fn handle(
    mut sock: TcpStream,
    route: &(dyn Fn(&str, &str) -> Reply + Send + Sync),
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let body_start = loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..body_start]).into_owned();
    let mut words = text.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let content_length = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let head_only = method == "HEAD";
    match route(method, path) {
        Reply::Nothing => {
            std::future::pending::<()>().await;
        }
        Reply::Body {
            status,
            body,
            piece,
            gap,
            stall_after,
        } => {
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            sock.write_all(head.as_bytes()).await?;
            if !head_only {
                let mut sent = 0;
                for chunk in body.chunks(piece.max(1)) {
                    if stall_after.is_some_and(|s| sent >= s) {
                        std::future::pending::<()>().await;
                    }
                    sock.write_all(chunk).await?;
                    sock.flush().await?;
                    sent += chunk.len();
                    tokio::time::sleep(gap).await;
                }
            }
        }
        Reply::ReadSlowly { status, piece, gap } => {
            let mut left = content_length.saturating_sub(head.len() - body_start);
            let mut buf = vec![0u8; piece.max(1)];
            while left > 0 {
                let want = left.min(buf.len());
                let n = sock.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Ok(());
                }
                left -= n;
                tokio::time::sleep(gap).await;
            }
            let head =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            sock.write_all(head.as_bytes()).await?;
        }
    }
    sock.shutdown().await
}
