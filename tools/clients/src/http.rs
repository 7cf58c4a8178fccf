//! The metrics listener: a bounded `GET` and reading Prometheus text.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response read; a `/metrics` page is tens of KiB.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// `GET path` with `Connection: close`: the status and the body. Status 0 means
/// no HTTP answer (refused, closed, timed out after `limit`, or not HTTP).
pub async fn get(addr: SocketAddr, path: &str, limit: Duration) -> (u16, String) {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await?;
        let mut out = Vec::new();
        s.take(MAX_RESPONSE).read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    let Ok(Ok(out)) = tokio::time::timeout(limit, exchange).await else {
        return (0, String::new());
    };
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The sum of every series of metric `name` whose label text contains `labels`
/// (`""` sums every series).
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']) && rest.contains(labels))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_summed_by_name_and_label() {
        let text = "# HELP a_total x\na_total{map=\"alias\"} 2\na_total{map=\"domain\"} 3\na_total_sum 9\nb 1.5\n";
        assert_eq!(metric(text, "a_total", ""), 5.0);
        assert_eq!(metric(text, "a_total", "map=\"alias\""), 2.0);
        assert_eq!(metric(text, "b", ""), 1.5);
        assert_eq!(metric(text, "c", ""), 0.0);
    }

    #[tokio::test]
    async fn nothing_listening_is_status_0() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(get(addr, "/", Duration::from_secs(2)).await.0, 0);
    }
}
