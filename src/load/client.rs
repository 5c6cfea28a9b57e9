//! `ordo load FILE --load-name N`: streams a CSV or NDJSON file into today's load of that name over HTTP
//! (CONTRACT §6). The file is read twice, never held whole: once for its SHA-256 (part of every batch's
//! idempotency key, so a rerun after an interruption replays what the server already has), once to send it in
//! batches. Transient failures (connection refused, 5xx, 429) are retried with backoff.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::records::MAX_RECORDS;
use crate::client::encode;
use crate::retry::{self, Backoff};

/// `ordo load` flags.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The file: CSV with the header `sku_ref,location_ref,qty`, or NDJSON (one record object per line); chosen by
    /// extension (`.csv`, `.ndjson`, `.jsonl`), else by its first line.
    pub file: PathBuf,
    /// The load to use (today's load of this name; opened when missing).
    #[arg(long)]
    pub load_name: String,
    /// Records per batch (at most 5000).
    #[arg(long, default_value_t = MAX_RECORDS as u16, value_parser = clap::value_parser!(u16).range(1..=5000))]
    pub batch_size: u16,
    /// Base URL of the API.
    #[arg(long, env = "ORDO_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The account's API key.
    #[arg(long, env = "ORDO_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Give up on a request after this many seconds of transient failures.
    #[arg(long, default_value_t = 120)]
    pub retry_for_secs: u64,
    /// Trust for an `https://` URL.
    #[command(flatten)]
    pub tls: crate::config::TlsClientConfig,
}

/// Errors of `ordo load`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Reading the file failed.
    #[error("read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a CSV with the expected header, or not NDJSON.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A batch of this file was already sent to this load cut differently: the same idempotency key now names a
    /// different payload, which happens when `--batch-size` changed between runs.
    #[error(
        "batch {batch} of this file was already sent to load {load_name:?} (id {load_id}) with different records: \
         the earlier run used another --batch-size. Rerun with the --batch-size of the first run (default 5000) to \
         resume it, or send the file to a new load with another --load-name"
    )]
    BatchSizeChanged {
        /// The load's name.
        load_name: String,
        /// The load's id.
        load_id: String,
        /// Index of the batch that differs.
        batch: usize,
    },
    /// The server refused a request (not retried).
    #[error("{method} {url}: HTTP {status}: {detail}")]
    Refused {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// Status.
        status: u16,
        /// The problem's detail, or the body.
        detail: String,
    },
    /// The server could not be reached or kept failing for the whole retry window.
    #[error("{method} {url}: gave up after {attempts} attempts: {last}")]
    Unreachable {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// An answer did not have the expected shape.
    #[error("unexpected answer from {url}: {message}")]
    Protocol {
        /// URL.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// The server's certificate was refused (not signed by a trusted CA, or not for this host), as every CLI
    /// client reports it; not retried.
    #[error(transparent)]
    Http(#[from] crate::client::ClientError),
    /// A setting is unusable (e.g. ORDO_CA_FILE).
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// Stopped by a signal.
    #[error("interrupted")]
    Interrupted,
}

/// The final summary printed on stdout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The load used.
    pub load_id: String,
    /// Its name.
    pub load_name: String,
    /// SHA-256 of the file (hex).
    pub sha256: String,
    /// Batches of this file.
    pub batches: u64,
    /// Of them, batches the server already had (a rerun).
    pub replayed_batches: u64,
    /// Records of the file's batches.
    pub total: i64,
    /// Skipped records.
    pub unchanged: i64,
    /// Applied records.
    pub changed: i64,
    /// Invalid records.
    pub failed: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_owned(),
        source,
    }
}

/// SHA-256 of the file and its number of lines, in one streaming pass.
fn digest(path: &Path) -> Result<(String, u64), ClientError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0u64;
    let mut last = b'\n';
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    if last != b'\n' {
        lines += 1;
    }
    Ok((hex::encode(hasher.finalize()), lines))
}

fn detect(path: &Path, first_line: &str) -> Format {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => Format::Csv,
        Some("ndjson" | "jsonl") => Format::Ndjson,
        _ if first_line.trim_start().starts_with('{') => Format::Ndjson,
        _ => Format::Csv,
    }
}

/// Splits one CSV line (RFC 4180 quoting: `"a,b"`, `""` for a quote; no line breaks inside fields).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => out.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    out.push(field);
    out
}

/// Reads records from the file, one batch at a time.
struct Records {
    path: PathBuf,
    reader: BufReader<File>,
    format: Format,
    /// Column positions of sku_ref, location_ref, qty (CSV).
    columns: [usize; 3],
    line: String,
}

impl Records {
    fn open(path: &Path) -> Result<Records, ClientError> {
        let mut reader = BufReader::with_capacity(1 << 16, File::open(path).map_err(io_err(path))?);
        let mut first = String::new();
        reader.read_line(&mut first).map_err(io_err(path))?;
        let format = detect(path, &first);
        let mut columns = [0, 1, 2];
        if format == Format::Csv {
            let header: Vec<String> = csv_fields(first.trim_end_matches(['\r', '\n']).trim_start_matches('\u{feff}'))
                .into_iter()
                .map(|h| h.trim().to_owned())
                .collect();
            for (slot, name) in columns.iter_mut().zip(["sku_ref", "location_ref", "qty"]) {
                *slot = header
                    .iter()
                    .position(|h| h == name)
                    .ok_or_else(|| ClientError::Format {
                        path: path.to_owned(),
                        message: format!("the CSV header must name sku_ref, location_ref and qty; got {header:?}"),
                    })?;
            }
        } else {
            // The first line is a record: read the file again from its start.
            reader = BufReader::with_capacity(1 << 16, File::open(path).map_err(io_err(path))?);
        }
        Ok(Records {
            path: path.to_owned(),
            reader,
            format,
            columns,
            line: String::new(),
        })
    }

    fn csv_record(&self, line: &str) -> Value {
        let fields = csv_fields(line);
        let mut rec = Map::new();
        for (name, &col) in ["sku_ref", "location_ref", "qty"].iter().zip(&self.columns) {
            let Some(v) = fields.get(col).map(|f| f.trim()).filter(|f| !f.is_empty()) else {
                continue;
            };
            let value = if *name == "qty" {
                // Numbers go as numbers; anything else as the text, for the server to refuse with a reason.
                v.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(v))
            } else {
                Value::from(v)
            };
            rec.insert((*name).to_owned(), value);
        }
        Value::Object(rec)
    }

    /// Up to `n` records; empty at the end of the file. Blank lines are skipped.
    fn next_batch(&mut self, n: usize) -> Result<Vec<Value>, ClientError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            self.line.clear();
            let read = self.reader.read_line(&mut self.line).map_err(io_err(&self.path))?;
            if read == 0 {
                break;
            }
            let line = self.line.trim_end_matches(['\r', '\n']);
            if line.trim().is_empty() {
                continue;
            }
            out.push(match self.format {
                Format::Csv => self.csv_record(line),
                // A line that is not JSON is still a record, so indices stay aligned; the server refuses it.
                Format::Ndjson => serde_json::from_str(line).unwrap_or_else(|_| Value::from(line)),
            });
        }
        Ok(out)
    }
}

/// How often progress is printed as a line when the output is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How often the load's status is asked for while its batches run.
const STATUS_POLL: Duration = Duration::from_millis(200);
/// The first wait before retrying a request: long enough for an API restart's listener hand-over.
const RETRY_FIRST: Duration = Duration::from_millis(200);
/// Random extra wait per retry, so many clients cut off together do not come back in step.
const RETRY_JITTER: Duration = Duration::from_millis(100);

/// The HTTP side: base URL, key, and the retry policy.
struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
    retry_for: Duration,
    shutdown: CancellationToken,
}

impl Api {
    /// Sends a request, retrying transient failures with exponential backoff (200 ms doubling to 5 s, with
    /// jitter) for up to `retry_for`. Returns the status and the JSON body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        key: Option<&str>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let url = format!("{}{path}", self.base);
        let started = Instant::now();
        let mut backoff = Backoff::new(RETRY_FIRST, retry::MAX_DELAY).with_jitter(RETRY_JITTER);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(AUTHORIZATION, format!("Bearer {}", self.key));
            if let Some(b) = body {
                req = req.header(CONTENT_TYPE, "application/json").body(b.to_vec());
            }
            if let Some(k) = key {
                req = req.header("idempotency-key", k);
            }
            let last = match req.send().await {
                Ok(res) => {
                    let status = res.status();
                    let transient = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    match res.bytes().await {
                        Ok(bytes) if !transient => {
                            let value: Value = serde_json::from_slice(&bytes)
                                .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&bytes).into_owned()));
                            return Ok((status, value));
                        }
                        Ok(bytes) => format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
                        Err(e) => format!("reading the answer: {e}"),
                    }
                }
                Err(e) if crate::tls::is_certificate_error(&e) => {
                    return Err(crate::client::ClientError::Certificate {
                        url,
                        message: crate::tls::error_chain(&e),
                    }
                    .into())
                }
                Err(e) => crate::tls::error_chain(&e),
            };
            if started.elapsed() >= self.retry_for {
                return Err(ClientError::Unreachable {
                    method,
                    url,
                    attempts,
                    last,
                });
            }
            tracing::info!(%url, attempt = attempts, error = %last, "request failed; retrying");
            if !backoff.wait(&self.shutdown).await {
                return Err(ClientError::Interrupted);
            }
        }
    }

    fn refused(&self, method: Method, path: &str, status: StatusCode, body: &Value) -> ClientError {
        let detail = body
            .get("detail")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string());
        ClientError::Refused {
            method,
            url: format!("{}{path}", self.base),
            status: status.as_u16(),
            detail,
        }
    }

    fn protocol(&self, path: &str, message: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            url: format!("{}{path}", self.base),
            message: message.into(),
        }
    }

    /// Today's open load of that name, if any.
    async fn find_open_load(&self, name: &str) -> Result<Option<String>, ClientError> {
        let path = format!("/api/loads?name={}&limit=10", encode(name));
        let (status, body) = self.call(Method::GET, &path, None, None).await?;
        if status != StatusCode::OK {
            return Err(self.refused(Method::GET, &path, status, &body));
        }
        let items = body["items"]
            .as_array()
            .ok_or_else(|| self.protocol(&path, "no items"))?;
        Ok(items
            .iter()
            .find(|l| l["status"] == "open")
            .and_then(|l| l["id"].as_str())
            .map(str::to_owned))
    }

    /// Uses today's load of that name, or opens it.
    async fn open_load(&self, name: &str) -> Result<String, ClientError> {
        if let Some(id) = self.find_open_load(name).await? {
            return Ok(id);
        }
        let body = serde_json::to_vec(&json!({"name": name})).unwrap_or_default();
        let (status, res) = self.call(Method::POST, "/api/loads", Some(&body), None).await?;
        match status {
            StatusCode::CREATED => res["id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| self.protocol("/api/loads", "no id")),
            // Opened concurrently by another client: use that one.
            StatusCode::CONFLICT => self
                .find_open_load(name)
                .await?
                .ok_or_else(|| self.refused(Method::POST, "/api/loads", status, &res)),
            _ => Err(self.refused(Method::POST, "/api/loads", status, &res)),
        }
    }
}

/// Progress on stderr: a redrawn bar on a terminal, a plain line every few seconds otherwise.
struct Progress {
    tty: bool,
    expected: u64,
    last: Instant,
}

impl Progress {
    fn show(&mut self, phase: &str, done: u64, of: u64, extra: &str, force: bool) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let pct = (done * 100).checked_div(of).unwrap_or(100).min(100);
            let filled = (pct / 5) as usize;
            let bar = format!("{}{}", "=".repeat(filled), " ".repeat(20 - filled));
            let _ = write!(err, "\r{phase:<10} [{bar}] {pct:>3}% {done}/{of} {extra}\x1b[K");
            let _ = err.flush();
        } else if force || self.last.elapsed() >= PLAIN_PROGRESS_EVERY {
            let _ = writeln!(err, "{phase}: {done}/{of} {extra}");
            self.last = Instant::now();
        }
    }

    fn finish(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// Reads the file batch by batch and hands each serialised body to the sender, until the end of the file, an error,
/// or the receiver going away.
fn read_batches(
    mut records: Records,
    batch_size: usize,
    tx: tokio::sync::mpsc::Sender<Result<(u64, Vec<u8>), ClientError>>,
) {
    loop {
        let item = records.next_batch(batch_size).map(|batch| {
            let n = batch.len() as u64;
            let body = serde_json::to_vec(&json!({"action": "upsert", "entity_type": "inventory", "records": batch}))
                .unwrap_or_default();
            (n, body)
        });
        let done = matches!(&item, Ok((0, _)) | Err(_));
        if matches!(&item, Ok((0, _))) || tx.blocking_send(item).is_err() || done {
            return;
        }
    }
}

/// Runs `ordo load`: sends the file's batches (replaying what the server already has), waits until every batch
/// is complete, and returns the summary of this file's batches.
pub async fn run(args: &LoadArgs, shutdown: CancellationToken) -> Result<Summary, ClientError> {
    let path = args.file.as_path();
    let (sha, lines) = digest(path)?;
    let http = args.tls.client()?;
    let api = Api {
        http,
        base: args.url.trim_end_matches('/').to_owned(),
        key: args.api_key.clone(),
        retry_for: Duration::from_secs(args.retry_for_secs),
        shutdown: shutdown.clone(),
    };
    let load_id = api.open_load(&args.load_name).await?;
    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        expected: lines,
        last: Instant::now(),
    };
    let records = Records::open(path)?;
    if records.format == Format::Csv {
        progress.expected = lines.saturating_sub(1);
    }
    // The next batch is read and serialised on a thread while the current one is in flight; one request at a time
    // keeps the server's acceptance order the file's order (a later batch wins for a position).
    let (tx, mut bodies) = tokio::sync::mpsc::channel::<Result<(u64, Vec<u8>), ClientError>>(2);
    let batch_size = usize::from(args.batch_size);
    std::thread::spawn(move || read_batches(records, batch_size, tx));
    let batches_path = format!("/api/loads/{load_id}/batches");
    let mut batch_ids = Vec::new();
    let mut summary = Summary {
        load_id: load_id.clone(),
        load_name: args.load_name.clone(),
        sha256: sha.clone(),
        ..Summary::default()
    };
    let mut sent = 0u64;
    while let Some(next) = bodies.recv().await {
        if shutdown.is_cancelled() {
            return Err(ClientError::Interrupted);
        }
        let (n, body) = next?;
        let key = format!("{load_id}:{sha}:{}", batch_ids.len());
        let (status, res) = api.call(Method::POST, &batches_path, Some(&body), Some(&key)).await?;
        match status {
            StatusCode::ACCEPTED => {}
            StatusCode::OK => summary.replayed_batches += 1,
            StatusCode::CONFLICT if res["detail"].as_str().is_some_and(|d| d.contains("idempotency key")) => {
                return Err(ClientError::BatchSizeChanged {
                    load_name: args.load_name.clone(),
                    load_id: load_id.clone(),
                    batch: batch_ids.len(),
                })
            }
            _ => return Err(api.refused(Method::POST, &batches_path, status, &res)),
        }
        let id = res["id"]
            .as_str()
            .ok_or_else(|| api.protocol(&batches_path, "no batch id"))?;
        batch_ids.push(id.to_owned());
        sent += n;
        let extra = format!(
            "records, {} batches ({} replayed)",
            batch_ids.len(),
            summary.replayed_batches
        );
        progress.show("sending", sent, progress.expected.max(sent), &extra, false);
    }
    progress.show(
        "sending",
        sent,
        sent,
        &format!("records, {} batches", batch_ids.len()),
        true,
    );
    progress.finish();
    summary.batches = batch_ids.len() as u64;

    // Wait for processing: one listing of the load per round gives every batch's status and counts.
    let load_path = format!("/api/loads/{load_id}");
    loop {
        let (status, res) = api.call(Method::GET, &load_path, None, None).await?;
        if status != StatusCode::OK {
            return Err(api.refused(Method::GET, &load_path, status, &res));
        }
        let all = res["batches"]
            .as_array()
            .ok_or_else(|| api.protocol(&load_path, "no batches"))?;
        let ours: Vec<&Value> = all
            .iter()
            .filter(|b| b["id"].as_str().is_some_and(|id| batch_ids.iter().any(|x| x == id)))
            .collect();
        let complete = ours.iter().filter(|b| b["status"] == "complete").count() as u64;
        let processed: i64 = ours
            .iter()
            .map(|b| {
                ["unchanged", "changed", "failed"]
                    .iter()
                    .map(|k| b["counts"][k].as_i64().unwrap_or(0))
                    .sum::<i64>()
            })
            .sum();
        let done = complete == summary.batches;
        progress.show(
            "processing",
            processed.max(0) as u64,
            sent,
            &format!("records, {complete}/{} batches complete", summary.batches),
            done,
        );
        if done {
            progress.finish();
            for b in ours {
                let c = &b["counts"];
                summary.total += c["total"].as_i64().unwrap_or(0);
                summary.unchanged += c["unchanged"].as_i64().unwrap_or(0);
                summary.changed += c["changed"].as_i64().unwrap_or(0);
                summary.failed += c["failed"].as_i64().unwrap_or(0);
            }
            return Ok(summary);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(ClientError::Interrupted),
            _ = tokio::time::sleep(STATUS_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CSV fields honour quotes and doubled quotes.
    #[test]
    fn csv_fields_split_like_rfc4180() {
        let cases: [(&str, &[&str]); 4] = [
            ("a,b,3", &["a", "b", "3"]),
            ("\"a,1\",b,", &["a,1", "b", ""]),
            ("\"say \"\"hi\"\"\",x,1", &["say \"hi\"", "x", "1"]),
            ("", &[""]),
        ];
        for (line, want) in cases {
            assert_eq!(csv_fields(line), want, "{line}");
        }
    }

    /// The format follows the extension, else the first line.
    #[test]
    fn format_detection() {
        assert_eq!(detect(Path::new("x.csv"), "{"), Format::Csv);
        assert_eq!(detect(Path::new("x.JSONL"), "a,b"), Format::Ndjson);
        assert_eq!(detect(Path::new("x.txt"), "  {\"sku_ref\": 1}"), Format::Ndjson);
        assert_eq!(detect(Path::new("x"), "sku_ref,location_ref,qty"), Format::Csv);
    }
}
