//! The OTLP/gRPC load tool of `bench/otlp.sh`, run as its own process so that the agent's CPU
//! and RSS are the agent's alone.
//!
//! - `otlp_load send --target http://127.0.0.1:4317 --spans 100 [--rate SPANS_PER_S]
//!   [--duration 10] [--connections 4] [--in-flight 4]`: sends pre-encoded requests of N spans
//!   shaped like a web service's traces (1 span in 5 SERVER, the rest CLIENT and INTERNAL
//!   children, six resource and six or seven span attributes) through tonic's client with a
//!   codec that writes the bytes as they are; at saturation (no `--rate`) from
//!   `connections × in-flight` concurrent calls, at a fixed rate from one paced caller. Prints
//!   one JSON line at the end: `{"ok_spans":..,"refused_requests":..,"wall_s":..}`.
//! - `otlp_load dump --spans 100 --out FILE`: writes the same 64 pre-encoded requests, each
//!   prefixed by its length (u32, little-endian), for `bench/otlp_grpc_send.py`, which sends them
//!   through grpcio (the transport of Python's OpenTelemetry exporter) at a fixed rate.
//! - `otlp_load sink --listen 127.0.0.1:0 --count-file F`: a TraceService and LogsService that
//!   count spans and log records without decoding them (a walk over the protobuf tags), answer
//!   OK, and rewrite `F` every 100 ms with `spans requests log_records` — the downstream of the agent's exporter, cheap enough not to
//!   be the bottleneck. Prints its address on stdout.
//!
//! Build: `cargo build --release -p sidelight-collector --example otlp_load`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::CompressionEncoding;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The sink counts log records too (the soak forwards tailed logs): an ExportLogsServiceRequest
/// nests records at the same field numbers as spans (1 resource, 2 scope, 2 record).
const LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

#[path = "../benches/support/otlp_traffic.rs"]
mod otlp_traffic;

use otlp_traffic::{SendCodec, request};

#[derive(Clone, Default)]
struct CountCodec;
struct CountEncoder;
struct CountDecoder;

impl tonic::codec::Codec for CountCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = u64;
    type Encoder = CountEncoder;
    type Decoder = CountDecoder;
    fn encoder(&mut self) -> CountEncoder {
        CountEncoder
    }
    fn decoder(&mut self) -> CountDecoder {
        CountDecoder
    }
}

impl tonic::codec::Encoder for CountEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: ExportTraceServiceResponse,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Decoder for CountDecoder {
    type Item = u64;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<u64>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        count_spans(&bytes)
            .map(Some)
            .ok_or_else(|| tonic::Status::invalid_argument("not an ExportTraceServiceRequest"))
    }
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Calls `f(field, bytes)` for every length-delimited field of a message; skips the others.
fn for_each_len(mut buf: &[u8], mut f: impl FnMut(u64, &[u8]) -> Option<()>) -> Option<()> {
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match key & 7 {
            0 => {
                varint(&mut buf)?;
            }
            1 => buf = buf.get(8..)?,
            5 => buf = buf.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (field, rest) = (buf.get(..len)?, buf.get(len..)?);
                f(key >> 3, field)?;
                buf = rest;
            }
            _ => return None,
        }
    }
    Some(())
}

/// Spans in an encoded `ExportTraceServiceRequest` (resource_spans = 1 → scope_spans = 2 →
/// spans = 2).
fn count_spans(buf: &[u8]) -> Option<u64> {
    let mut n = 0;
    for_each_len(buf, |f, rs| {
        if f != 1 {
            return Some(());
        }
        for_each_len(rs, |f, ss| {
            if f != 2 {
                return Some(());
            }
            for_each_len(ss, |f, _| {
                n += u64::from(f == 2);
                Some(())
            })
        })
    })?;
    Some(n)
}

// ---------------------------------------------------------------------------------------------
// The sink.

#[derive(Clone, Default)]
struct Counts {
    spans: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    logs: Arc<AtomicU64>,
}

/// The TraceService (`LOGS = false`) or the LogsService (`true`): tonic routes by service name.
#[derive(Clone)]
struct Sink<const LOGS: bool>(Counts);

impl tonic::server::NamedService for Sink<false> {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tonic::server::NamedService for Sink<true> {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}

/// Counts one request's items into `spans` or, when `logs`, into `logs`.
struct Count(Counts, bool);

impl tonic::server::UnaryService<u64> for Count {
    // Both responses are empty messages: the traces one encodes as the logs one would.
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;
    fn call(&mut self, request: tonic::Request<u64>) -> Self::Future {
        let counter = if self.1 { &self.0.logs } else { &self.0.spans };
        counter.fetch_add(*request.get_ref(), Ordering::Relaxed);
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(tonic::Response::new(
            ExportTraceServiceResponse::default(),
        )))
    }
}

impl<B, const LOGS: bool> tower::Service<http::Request<B>> for Sink<LOGS>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let counts = self.0.clone();
        Box::pin(async move {
            let want = if LOGS { LOGS_PATH } else { PATH };
            if req.uri().path() != want {
                return Ok(tonic::Status::unimplemented("Export only").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(CountCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(256 << 20);
            Ok(grpc.unary(Count(counts, LOGS), req).await)
        })
    }
}

async fn sink(listen: SocketAddr, count_file: Option<String>) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("{}", listener.local_addr()?);
    let counts = Counts::default();
    if let Some(path) = count_file {
        let c = counts.clone();
        tokio::spawn(async move {
            let tmp = format!("{path}.tmp");
            loop {
                let line = format!(
                    "{} {} {}\n",
                    c.spans.load(Ordering::Relaxed),
                    c.requests.load(Ordering::Relaxed),
                    c.logs.load(Ordering::Relaxed)
                );
                if std::fs::write(&tmp, line).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    tonic::transport::Server::builder()
        .add_service(Sink::<false>(counts.clone()))
        .add_service(Sink::<true>(counts))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The sender.

struct SendArgs {
    target: String,
    spans: usize,
    rate: Option<f64>,
    duration: Duration,
    connections: usize,
    in_flight: usize,
}

/// How many distinct requests a sender cycles through.
const DISTINCT_REQUESTS: usize = 64;

fn dump(spans: usize, out: &str) -> Result<(), BoxError> {
    let mut file = Vec::new();
    for s in 0..DISTINCT_REQUESTS {
        let body = request(spans, s);
        file.extend_from_slice(&u32::try_from(body.len())?.to_le_bytes());
        file.extend_from_slice(&body);
    }
    std::fs::write(out, file)?;
    Ok(())
}

async fn send(a: SendArgs) -> Result<(), BoxError> {
    let requests: Arc<Vec<Bytes>> = Arc::new(
        (0..DISTINCT_REQUESTS)
            .map(|s| request(a.spans, s))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut channels = Vec::new();
    for _ in 0..a.connections.max(1) {
        channels.push(
            tonic::transport::Channel::from_shared(a.target.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let workers = if a.rate.is_some() {
        1
    } else {
        channels.len() * a.in_flight.max(1)
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let channel = channels[w % channels.len()].clone();
        let (requests, stop, ok, refused) =
            (requests.clone(), stop.clone(), ok.clone(), refused.clone());
        let (spans, rate) = (a.spans as u64, a.rate);
        tasks.push(tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            let path = http::uri::PathAndQuery::from_static(PATH);
            // The rate is in spans per second; one request carries `spans`.
            let mut ticker = rate.map(|r| {
                let mut t =
                    tokio::time::interval(Duration::from_secs_f64(spans as f64 / r.max(1.0)));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                if grpc.ready().await.is_err() {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let body = requests[i % requests.len()].clone();
                i += 1;
                match grpc
                    .unary(tonic::Request::new(body), path.clone(), SendCodec)
                    .await
                {
                    Ok(_) => {
                        ok.fetch_add(spans, Ordering::Relaxed);
                    }
                    Err(_) => {
                        // UNAVAILABLE from a full queue: back off a little, as SDKs do.
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(a.duration).await;
    stop.store(true, Ordering::Relaxed);
    let wall = started.elapsed().as_secs_f64();
    let ok_at_stop = ok.load(Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "{{\"ok_spans\":{ok_at_stop},\"refused_requests\":{},\"wall_s\":{wall:.3},\"spans_per_request\":{}}}",
        refused.load(Ordering::Relaxed),
        a.spans
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn usage() -> ! {
    eprintln!(
        "usage: otlp_load send --target URL --spans N [--rate SPANS_PER_S] [--duration SECS] [--connections N] [--in-flight N]\n       otlp_load dump --spans N --out FILE\n       otlp_load sink [--listen ADDR] [--count-file PATH]"
    );
    std::process::exit(64)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    let mut opts = std::collections::HashMap::new();
    while let Some(k) = args.next() {
        let Some(k) = k.strip_prefix("--") else {
            usage()
        };
        let v = args.next().unwrap_or_else(|| usage());
        opts.insert(k.to_owned(), v);
    }
    let num = |k: &str, d: f64| -> f64 {
        opts.get(k)
            .map(|v| v.parse().unwrap_or_else(|_| usage()))
            .unwrap_or(d)
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1)
        }
    };
    let result = match mode.as_str() {
        "send" => rt.block_on(send(SendArgs {
            target: opts
                .get("target")
                .cloned()
                .unwrap_or_else(|| "http://127.0.0.1:4317".into()),
            spans: num("spans", 100.0) as usize,
            rate: opts.contains_key("rate").then(|| num("rate", 0.0)),
            duration: Duration::from_secs_f64(num("duration", 10.0)),
            connections: num("connections", 4.0) as usize,
            in_flight: num("in-flight", 4.0) as usize,
        })),
        "dump" => dump(
            num("spans", 100.0) as usize,
            opts.get("out").map_or("requests.bin", String::as_str),
        ),
        "sink" => rt.block_on(sink(
            opts.get("listen")
                .map(|v| v.parse().unwrap_or_else(|_| usage()))
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            opts.get("count-file").cloned(),
        )),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("otlp_load {mode}: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_spans_without_decoding() {
        for n in [1, 100, 512] {
            assert_eq!(super::count_spans(&super::request(n, 3)), Some(n as u64));
        }
        assert_eq!(super::count_spans(&[0x0a, 0x05, 0x01]), None);
    }
}
