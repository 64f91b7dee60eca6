//! Request-size limits that hold before and after decompression: a body is read only up to the
//! limit, and a gzip body is inflated only up to the limit (plus the one byte that proves it is
//! over), so a compression bomb costs at most `limit` bytes of memory and the time to inflate
//! them.

use std::io::Read;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use flate2::read::MultiGzDecoder;
use http_body_util::BodyExt;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the limit. `inflated` is how many bytes were read or inflated before stopping.
    #[error("the request is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
        /// Bytes produced before giving up (at most `limit + 1`).
        inflated: usize,
    },
    /// Not valid gzip.
    #[error("invalid gzip data: {0}")]
    Corrupt(String),
    /// The connection failed while reading.
    #[error("reading the request body failed: {0}")]
    Read(String),
}

/// Reads a body, refusing as soon as it exceeds `limit` bytes.
pub async fn read_capped(mut body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(BodyError::TooLarge {
                    limit,
                    inflated: buf.len() + data.len(),
                });
            }
            if buf.is_empty() {
                // The common case: one frame; keep it without copying.
                buf = BytesMut::from(data);
                continue;
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Inflates gzip (one or more members) up to `limit` bytes.
pub fn gunzip_capped(compressed: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    MultiGzDecoder::new(compressed)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Corrupt(e.to_string()))?;
    if out.len() > limit {
        return Err(BodyError::TooLarge {
            limit,
            inflated: out.len(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        e.write_all(data).expect("compress");
        e.finish().expect("compress")
    }

    /// 1 GiB of zeros as 1024 concatenated gzip members of 1 MiB each (about 1 MiB on the wire).
    pub(crate) fn bomb() -> Vec<u8> {
        let member = gzip(&vec![0u8; 1 << 20]);
        member.repeat(1024)
    }

    #[test]
    fn gunzip_round_trip_and_multi_member() {
        let mut two = gzip(b"hello ");
        two.extend(gzip(b"world"));
        assert_eq!(gunzip_capped(&two, 1024).expect("ok"), b"hello world");
        assert!(matches!(
            gunzip_capped(b"not gzip at all", 1024),
            Err(BodyError::Corrupt(_))
        ));
        let mut truncated = gzip(&[7u8; 4096]);
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(
            gunzip_capped(&truncated, 1 << 20),
            Err(BodyError::Corrupt(_))
        ));
    }

    #[test]
    fn a_gzip_bomb_is_refused_having_inflated_no_more_than_the_limit() {
        let bomb = bomb();
        assert!(bomb.len() < 2 << 20, "compressed {} bytes", bomb.len());
        let limit = 16 << 20;
        match gunzip_capped(&bomb, limit) {
            Err(BodyError::TooLarge { limit: l, inflated }) => {
                assert_eq!(l, limit);
                assert!(inflated <= limit + 1, "inflated {inflated}");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Exactly at the limit is fine.
        let exact = gzip(&vec![1u8; 4096]);
        assert_eq!(gunzip_capped(&exact, 4096).expect("at limit").len(), 4096);
        assert!(gunzip_capped(&exact, 4095).is_err());
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_limit() {
        let ok = read_capped(Body::from(vec![1u8; 100]), 100)
            .await
            .expect("at limit");
        assert_eq!(ok.len(), 100);
        let err = read_capped(Body::from(vec![1u8; 101]), 100).await;
        assert!(matches!(err, Err(BodyError::TooLarge { limit: 100, .. })));
    }
}
