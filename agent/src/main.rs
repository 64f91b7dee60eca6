//! Entry point placeholder; the CLI lands in the next commit.
fn main() {}
