//! The kit's loopback Slack Web API ([`sidelight_testkit::ChatPeers`]) as a process, for the
//! shell fault scenarios (`faults/`): prints `READY port=N` once listening, answers
//! `GET /state` with what it accepted and refused, and runs until killed.
//!
//! Usage: loopback-slack --token-file F [--ratelimit-seconds 60] [--retry-after 5]
//! [--channel-limit]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sidelight_testkit::{ChatOptions, ChatPeers, ChatSecrets};

/// A loopback Slack Web API that checks requests as Slack does.
#[derive(Parser)]
struct Args {
    /// File holding the bot token every call must carry (`Authorization: Bearer`).
    #[arg(long)]
    token_file: PathBuf,
    /// For this many seconds from the first call, answer every authenticated call HTTP 429.
    #[arg(long, default_value_t = 60.0)]
    ratelimit_seconds: f64,
    /// The `Retry-After` seconds of those 429 answers.
    #[arg(long, default_value_t = 5)]
    retry_after: u64,
    /// Also enforce Slack's one `chat.postMessage` per second per channel (429, Retry-After 1).
    #[arg(long)]
    channel_limit: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.token_file.display()))?
        .trim()
        .to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "{}: empty token",
        args.token_file.display()
    );
    let window = Duration::try_from_secs_f64(args.ratelimit_seconds)
        .map_err(|e| anyhow::anyhow!("--ratelimit-seconds: {e}"))?;
    let peers = ChatPeers::start_with(
        ChatSecrets {
            slack_token: token,
            hook_token: String::new(),
            hook_hmac: String::new(),
        },
        ChatOptions {
            channel_limit: args.channel_limit,
            ratelimit_window: (!window.is_zero()).then_some((window, args.retry_after)),
            ..ChatOptions::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("cannot listen: {e}"))?;
    let port = peers
        .url
        .rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .unwrap_or_default();
    println!("READY port={port}");
    loop {
        std::thread::park();
    }
}
