//! A minimal keep-alive HTTP/1.1 client: one connection, one request at a time, no
//! dependency, cheap enough not to be what a scenario measures.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::ws::host_of;

pub struct Http {
    io: BufReader<TcpStream>,
    host: String,
}

impl Http {
    pub async fn connect(url: &str) -> std::io::Result<Http> {
        let host = host_of(url).to_string();
        let tcp = TcpStream::connect(&host).await?;
        tcp.set_nodelay(true)?;
        Ok(Http {
            io: BufReader::new(tcp),
            host,
        })
    }

    /// One request; the status and the body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        auth: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let stream = self.io.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            self.io.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        self.io.read_exact(&mut body).await?;
        Ok((status, body))
    }
}
