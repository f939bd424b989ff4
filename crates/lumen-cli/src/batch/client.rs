//! A minimal blocking HTTP/1.1 client for `lumen batch` against a running server: plain
//! `http://` (a server behind TLS is reached through its proxy's plain side or a tunnel),
//! one request per connection, uploads streamed from disk and downloads streamed to disk.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// Where the server is and which key to send.
pub struct Client {
    host: String,
    port: u16,
    key: Option<String>,
}

/// A response head and a reader positioned at its body.
struct Response {
    status: u16,
    chunked: bool,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// A client for `url` (`http://HOST[:PORT]`, optional trailing `/v1`).
    pub fn new(url: &str, key: Option<String>) -> Result<Client> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--url must start with http:// (got '{url}')"))?;
        let hostport = rest.split('/').next().unwrap_or("");
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse().with_context(|| format!("bad port in '{url}'"))?,
            ),
            None => (hostport, 80),
        };
        if host.is_empty() {
            bail!("no host in '{url}'");
        }
        Ok(Client {
            host: host.to_string(),
            port,
            key: key.filter(|k| !k.is_empty()),
        })
    }

    fn send(&self, method: &str, path: &str, ctype: &str, len: u64) -> Result<TcpStream> {
        let s = TcpStream::connect((self.host.as_str(), self.port))
            .with_context(|| format!("cannot connect to {}:{}", self.host, self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(600)))?;
        let auth = self
            .key
            .as_ref()
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let mut w = &s;
        write!(
            w,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
            self.host
        )?;
        Ok(s)
    }

    fn head(s: TcpStream) -> Result<Response> {
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP response: {line:?}"))?;
        let mut chunked = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            let l = line.to_ascii_lowercase();
            if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            }
        }
        Ok(Response {
            status,
            chunked,
            reader,
        })
    }

    /// Copies the body of `r` into `out`.
    fn body_to(mut r: Response, out: &mut impl Write) -> Result<()> {
        if !r.chunked {
            std::io::copy(&mut r.reader, out)?;
            return Ok(());
        }
        let mut line = String::new();
        loop {
            line.clear();
            r.reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| anyhow!("bad chunk size {line:?}"))?;
            if size == 0 {
                return Ok(());
            }
            std::io::copy(&mut (&mut r.reader).take(size as u64), out)?;
            line.clear();
            r.reader.read_line(&mut line)?;
        }
    }

    /// The JSON body of `r`, or its OpenAI error as an error.
    fn json(r: Response) -> Result<Value> {
        let status = r.status;
        let mut buf = Vec::new();
        Self::body_to(r, &mut buf)?;
        let v: Value = serde_json::from_slice(&buf)
            .with_context(|| format!("HTTP {status}: {}", String::from_utf8_lossy(&buf)))?;
        if !(200..300).contains(&status) {
            let msg = v["error"]["message"].as_str().unwrap_or("").to_string();
            bail!("HTTP {status}: {msg}");
        }
        Ok(v)
    }

    /// `GET path` as JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        let s = self.send("GET", path, "application/json", 0)?;
        Self::json(Self::head(s)?)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let text = body.to_string();
        let s = self.send("POST", path, "application/json", text.len() as u64)?;
        (&s).write_all(text.as_bytes())?;
        Self::json(Self::head(s)?)
    }

    /// Uploads `file` to `/v1/files` with purpose `batch`, streamed; the file object.
    pub fn upload(&self, file: &Path) -> Result<Value> {
        let boundary = format!("lumen{}", lumen_store::secret::random_hex(12));
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().replace(['"', '\r', '\n'], "_"))
            .unwrap_or_else(|| "input.jsonl".into());
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/jsonl\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let mut f = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let len = f.metadata()?.len();
        let s = self.send(
            "POST",
            "/v1/files",
            &format!("multipart/form-data; boundary={boundary}"),
            head.len() as u64 + len + tail.len() as u64,
        )?;
        let mut w = &s;
        w.write_all(head.as_bytes())?;
        std::io::copy(&mut f, &mut w)?;
        w.write_all(tail.as_bytes())?;
        Self::json(Self::head(s)?)
    }

    /// Appends the content of file `id` to `out`.
    pub fn download(&self, id: &str, out: &mut impl Write) -> Result<()> {
        let s = self.send(
            "GET",
            &format!("/v1/files/{id}/content"),
            "application/json",
            0,
        )?;
        let r = Self::head(s)?;
        if r.status != 200 {
            return Self::json(r).map(|_| ());
        }
        Self::body_to(r, out)
    }
}
