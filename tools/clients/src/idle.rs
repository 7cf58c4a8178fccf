//! Many held connections: opening them (each answered once), asking them again,
//! and noticing which ones the server closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::conn::{Conn, Framing, ReadError};

/// One connection that was opened and asked once.
#[derive(Debug)]
pub enum Opened {
    /// Answered: the connection, its reply and how long connect + reply took.
    Answered(Conn<TcpStream>, Bytes, Duration),
    /// The server closed it before replying.
    Closed,
    /// Connecting or the exchange failed otherwise (or took longer than the limit).
    Failed(String),
}

/// Opens `n` socketmap connections to `addr`, `concurrency` at a time, each
/// sending `request` (a whole netstring) once within `limit`.
pub async fn open(
    addr: SocketAddr,
    n: usize,
    request: &[u8],
    concurrency: usize,
    limit: Duration,
) -> Vec<Opened> {
    let request: Arc<[u8]> = request.into();
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (gate, request) = (gate.clone(), request.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let started = Instant::now();
            let exchange = async {
                let mut conn = Conn::tcp(addr, Framing::Netstring)
                    .await
                    .map_err(ReadError::Io)?;
                let reply = conn.exchange(&request).await?;
                Ok::<_, ReadError>((conn, reply))
            };
            match tokio::time::timeout(limit, exchange).await {
                Ok(Ok((conn, reply))) => Opened::Answered(conn, reply, started.elapsed()),
                Ok(Err(ReadError::Closed { .. })) => Opened::Closed,
                Ok(Err(e)) => Opened::Failed(e.to_string()),
                Err(_) => Opened::Failed("no reply in time".into()),
            }
        });
    }
    let mut opened = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        opened.push(joined.unwrap_or_else(|e| Opened::Failed(e.to_string())));
    }
    opened
}

/// Sends `request` on every connection once more and expects `reply`; returns
/// the connections that answered so and how many did not.
pub async fn ask_again(
    conns: Vec<Conn<TcpStream>>,
    request: &[u8],
    reply: &[u8],
    limit: Duration,
) -> (Vec<Conn<TcpStream>>, usize) {
    let (request, reply): (Arc<[u8]>, Arc<[u8]>) = (request.into(), reply.into());
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (request, reply) = (request.clone(), reply.clone());
            tokio::spawn(async move {
                let answered = matches!(
                    tokio::time::timeout(limit, conn.exchange(&request)).await,
                    Ok(Ok(got)) if got[..] == reply[..]
                );
                answered.then_some(conn)
            })
        })
        .collect();
    let mut kept = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for task in tasks {
        match task.await {
            Ok(Some(conn)) => kept.push(conn),
            _ => failed += 1,
        }
    }
    (kept, failed)
}

/// How many of the held connections the server has closed (EOF or a reset
/// pending), looked at without waiting.
pub async fn closed_by_server(conns: &mut [Conn<TcpStream>]) -> usize {
    // Let the reactor collect pending events first.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut byte = [0u8; 1];
    conns
        .iter()
        .filter(|c| match c.stream().try_read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_are_opened_asked_again_and_closes_noticed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Answers twice on each connection, then closes it.
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 22];
                    for _ in 0..2 {
                        if s.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        s.write_all(b"4:OK 1,").await.unwrap();
                    }
                });
            }
        });
        let request = b"18:domain example.org,";
        let opened = open(addr, 5, request, 2, Duration::from_secs(5)).await;
        let conns: Vec<_> = opened
            .into_iter()
            .map(|o| match o {
                Opened::Answered(c, reply, _) => {
                    assert_eq!(&reply[..], b"OK 1");
                    c
                }
                other => panic!("{other:?}"),
            })
            .collect();
        let mut conns = conns;
        assert_eq!(closed_by_server(&mut conns).await, 0);
        let (mut conns, failed) = ask_again(conns, request, b"OK 1", Duration::from_secs(5)).await;
        assert_eq!((conns.len(), failed), (5, 0));
        // The server has closed every connection after its second answer.
        let deadline = Instant::now() + Duration::from_secs(5);
        while closed_by_server(&mut conns).await < 5 {
            assert!(Instant::now() < deadline, "closes not noticed");
        }
        let (_, failed) = ask_again(conns, request, b"OK 1", Duration::from_secs(5)).await;
        assert_eq!(failed, 5);
    }
}
