//! A small HTTP/1.1 endpoint on `admin_listen`: Prometheus `GET /metrics`, and the
//! query insight as JSON under `/api/`.
//! One request per connection, a bounded request head, a read timeout; answers are
//! rendered off the event loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::insight_views;
use crate::metrics;
use crate::shared::Shared;
use crate::views;

const MAX_HEAD: usize = 8 * 1024;

/// Requests served at once; more are closed unanswered (scrapers retry).
const MAX_CONCURRENT: usize = 16;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // dropped: closed
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    // Reading the request and writing the answer, 10 s in all.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), handle(stream, shared)).await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin_listen accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await?;
            if n == 0 || head.len() + n > MAX_HEAD {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    let response = match read {
        // Rendered on the blocking pool: a page of many fingerprints takes milliseconds
        // that the sessions sharing this event loop would otherwise wait.
        Ok(Ok(())) => tokio::task::spawn_blocking(move || respond(&head, &shared))
            .await
            .unwrap_or_else(|_| reply(500, "text/plain", "internal error\n".into(), false)),
        _ => reply(400, "text/plain", "bad request\n".into(), false),
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

fn respond(head: &[u8], shared: &Shared) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return reply(405, "text/plain", "only GET and HEAD\n".into(), head_only);
    }
    match path {
        "/metrics" => reply(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(shared),
            head_only,
        ),
        "/" => reply(
            200,
            "text/plain; charset=utf-8",
            "pgopt proxy: /metrics (Prometheus), /api/queries[/FINGERPRINT], /api/slow, /api/nplus1, /api/plans, /api/replicas (JSON)\n".into(),
            head_only,
        ),
        "/api/cache" => reply(
            200,
            "application/json",
            crate::cache_views::api(shared.cache.as_deref()),
            head_only,
        ),
        "/api/replicas" => reply(
            200,
            "application/json",
            views::table_json(&views::replicas(shared)),
            head_only,
        ),
        _ => match insight_views::api(shared, target) {
            Some((status, body)) => reply(status, "application/json", body, head_only),
            None => reply(404, "text/plain", "not found\n".into(), head_only),
        },
    }
}

fn reply(status: u16, content_type: &str, body: String, head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Method Not Allowed",
    };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}
