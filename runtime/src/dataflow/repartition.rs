//! The repartition topic's records (partition = keyed partition = task):
//! data records (stage-1 output, with the source record kept for the
//! late-events path) and watermark records (each stage-1 task tells every
//! keyed partition how far its source partition has progressed). Binary,
//! little endian, versioned by the first byte: versions 1 and 2 name the
//! upstream by its task index (written by runtimes before source layouts;
//! still read), 3 and 4 by its source partition's id
//! ([`crate::dataflow::sources::source_id`]); version 5 is a watermark
//! record that is also a drain barrier (the upstream's stage 1 stopped for
//! a drained savepoint, and everything it wrote before is in front of it).
//! The format is what travels
//! through Kafka between tasks of different runtime versions: never change
//! the bytes of an existing version.

use super::KeyedRecord;
use crate::aggregate::{AggInput, Number};
use crate::error::Result;
use crate::error::RuntimeError;

const DATA_BY_TASK: u8 = 1;
const WATERMARK_BY_TASK: u8 = 2;
const DATA: u8 = 3;
const WATERMARK: u8 = 4;
const BARRIER: u8 = 5;

/// Where a repartition record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamRef {
    /// A source partition ([`crate::dataflow::sources::source_id`]): what this
    /// runtime writes.
    Source(u64),
    /// The index of the task that read it, in the positional layout (what
    /// older runtimes wrote).
    Task(u32),
}

impl Default for UpstreamRef {
    fn default() -> Self {
        UpstreamRef::Source(0)
    }
}

/// A stage-1 record on its way to the keyed partition that owns its key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataRecord {
    /// The source partition it came from.
    pub upstream: UpstreamRef,
    /// Its offset in that source partition: keyed partitions drop records
    /// they have already seen from an upstream (replays after a restore,
    /// and leaked records of brokers that do not abort fenced transactions).
    pub source_offset: i64,
    pub keyed: KeyedRecord,
    pub source_key: Option<Vec<u8>>,
    pub source_value: Vec<u8>,
}

/// Progress of one upstream source partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkRecord {
    pub upstream: UpstreamRef,
    pub watermark: i64,
    /// The upstream is idle (idle handling on): it does not hold back the
    /// keyed partition's watermark until it sends data again.
    pub idle: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Wire {
    Data(DataRecord),
    Watermark(WatermarkRecord),
    /// A watermark that is also the barrier of drain `id`.
    Barrier(WatermarkRecord, String),
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_upstream(out: &mut Vec<u8>, u: UpstreamRef, by_source: u8, by_task: u8) {
    match u {
        UpstreamRef::Source(id) => {
            out.push(by_source);
            out.extend_from_slice(&id.to_le_bytes());
        }
        UpstreamRef::Task(t) => {
            out.push(by_task);
            out.extend_from_slice(&t.to_le_bytes());
        }
    }
}

pub fn encode_data(r: &DataRecord, out: &mut Vec<u8>) {
    encode_data_parts(
        r.upstream,
        r.source_offset,
        &r.keyed,
        r.source_key.as_deref(),
        &r.source_value,
        out,
    );
}

/// [`encode_data`] of a record whose source key and value are borrowed
/// (stage 1 encodes each source record once, without copying it first).
pub fn encode_data_parts(
    upstream: UpstreamRef,
    source_offset: i64,
    keyed: &KeyedRecord,
    source_key: Option<&[u8]>,
    source_value: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    put_upstream(out, upstream, DATA, DATA_BY_TASK);
    out.extend_from_slice(&source_offset.to_le_bytes());
    out.extend_from_slice(&keyed.event_time.to_le_bytes());
    put_bytes(out, &keyed.group_key);
    out.extend_from_slice(&(keyed.inputs.len() as u32).to_le_bytes());
    for i in &keyed.inputs {
        match *i {
            AggInput::Absent => out.push(0),
            AggInput::Present => out.push(1),
            AggInput::Number(Number::Int(v)) => {
                out.push(2);
                out.extend_from_slice(&v.to_le_bytes());
            }
            AggInput::Number(Number::Float(v)) => {
                out.push(3);
                out.extend_from_slice(&v.to_le_bytes());
            }
            AggInput::Hash(h) => {
                out.push(4);
                out.extend_from_slice(&h.to_le_bytes());
            }
            AggInput::Text { start, end } => {
                out.push(5);
                out.extend_from_slice(&start.to_le_bytes());
                out.extend_from_slice(&end.to_le_bytes());
            }
        }
    }
    put_bytes(out, &keyed.values);
    match source_key {
        Some(k) => {
            out.push(1);
            put_bytes(out, k);
        }
        None => out.push(0),
    }
    put_bytes(out, source_value);
}

pub fn encode_watermark(w: &WatermarkRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    put_upstream(&mut out, w.upstream, WATERMARK, WATERMARK_BY_TASK);
    out.extend_from_slice(&w.watermark.to_le_bytes());
    out.push(u8::from(w.idle));
    out
}

/// A watermark record that is also the barrier of drain `id`, from source
/// partition `source` ([`crate::dataflow::sources::source_id`]): the
/// upstream wrote everything before it and writes nothing more while the
/// drain lasts. (Only runtimes that name upstreams by source drain.)
pub fn encode_barrier(source: u64, watermark: i64, idle: bool, id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(22 + id.len());
    put_upstream(&mut out, UpstreamRef::Source(source), BARRIER, BARRIER);
    out.extend_from_slice(&watermark.to_le_bytes());
    out.push(u8::from(idle));
    put_bytes(&mut out, id.as_bytes());
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(RuntimeError::Dataflow("truncated internal record".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// A repartition record decoded in place: the source record is borrowed
/// from the bytes, the keyed part written into a caller's [`KeyedRecord`]
/// (its buffers reused).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WireRef<'a> {
    Data(DataRef<'a>),
    Watermark(WatermarkRecord),
    /// A watermark that is also the barrier of the drain with this id.
    Barrier(WatermarkRecord, &'a str),
}

/// A data record of [`decode_into`]: the keyed part is in the caller's
/// [`KeyedRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRef<'a> {
    pub upstream: UpstreamRef,
    pub source_offset: i64,
    pub source_key: Option<&'a [u8]>,
    pub source_value: &'a [u8],
}

/// Decodes a repartition record. Errors mean corruption or a record from
/// another producer; the caller fails the task rather than guess.
pub fn decode(bytes: &[u8]) -> Result<Wire> {
    let mut keyed = KeyedRecord::default();
    Ok(match decode_into(bytes, &mut keyed)? {
        WireRef::Data(d) => Wire::Data(DataRecord {
            upstream: d.upstream,
            source_offset: d.source_offset,
            keyed,
            source_key: d.source_key.map(<[u8]>::to_vec),
            source_value: d.source_value.to_vec(),
        }),
        WireRef::Watermark(w) => Wire::Watermark(w),
        WireRef::Barrier(w, id) => Wire::Barrier(w, id.to_owned()),
    })
}

/// [`decode`] without allocating: a data record's keyed part replaces
/// `keyed`'s content (on an error, `keyed` holds a part of it).
pub fn decode_into<'a>(bytes: &'a [u8], keyed: &mut KeyedRecord) -> Result<WireRef<'a>> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    let upstream = match version {
        DATA | WATERMARK | BARRIER => UpstreamRef::Source(r.u64()?),
        DATA_BY_TASK | WATERMARK_BY_TASK => UpstreamRef::Task(r.u32()?),
        v => {
            return Err(RuntimeError::Dataflow(format!(
                "unknown internal record version {v}"
            )));
        }
    };
    match version {
        DATA | DATA_BY_TASK => {
            let source_offset = r.i64()?;
            keyed.event_time = r.i64()?;
            keyed.group_key.clear();
            keyed.group_key.extend_from_slice(r.bytes()?);
            let n = r.u32()? as usize;
            keyed.inputs.clear();
            keyed.inputs.reserve(n.min(64));
            for _ in 0..n {
                keyed.inputs.push(match r.u8()? {
                    0 => AggInput::Absent,
                    1 => AggInput::Present,
                    2 => AggInput::Number(Number::Int(r.i64()?)),
                    3 => AggInput::Number(Number::Float(f64::from_le_bytes(r.array()?))),
                    4 => AggInput::Hash(u64::from_le_bytes(r.array()?)),
                    5 => AggInput::Text {
                        start: r.u32()?,
                        end: r.u32()?,
                    },
                    t => {
                        return Err(RuntimeError::Dataflow(format!(
                            "unknown input tag {t} in internal record"
                        )));
                    }
                });
            }
            keyed.values.clear();
            keyed.values.extend_from_slice(r.bytes()?);
            let source_key = match r.u8()? {
                0 => None,
                _ => Some(r.bytes()?),
            };
            let source_value = r.bytes()?;
            Ok(WireRef::Data(DataRef {
                upstream,
                source_offset,
                source_key,
                source_value,
            }))
        }
        _ => {
            let w = WatermarkRecord {
                upstream,
                watermark: r.i64()?,
                idle: r.u8()? != 0,
            };
            if version != BARRIER {
                return Ok(WireRef::Watermark(w));
            }
            let id = std::str::from_utf8(r.bytes()?)
                .map_err(|_| RuntimeError::Dataflow("a drain barrier's id is not UTF-8".into()))?;
            Ok(WireRef::Barrier(w, id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_records_round_trip() {
        let r = DataRecord {
            upstream: UpstreamRef::Source(u64::MAX - 7),
            source_offset: 123_456,
            keyed: KeyedRecord {
                group_key: br#"["u1",3]"#.to_vec(),
                event_time: -5,
                inputs: vec![
                    AggInput::Absent,
                    AggInput::Present,
                    AggInput::Number(Number::Int(-9)),
                    AggInput::Number(Number::Float(2.5)),
                    AggInput::Hash(u64::MAX),
                    AggInput::Text { start: 1, end: 4 },
                ],
                values: b"\"abc\"".to_vec(),
            },
            source_key: Some(b"k".to_vec()),
            source_value: b"{\"a\":1}".to_vec(),
        };
        let mut buf = Vec::new();
        encode_data(&r, &mut buf);
        assert_eq!(decode(&buf).unwrap(), Wire::Data(r.clone()));
        let no_key = DataRecord {
            source_key: None,
            ..r
        };
        encode_data(&no_key, &mut buf);
        assert_eq!(decode(&buf).unwrap(), Wire::Data(no_key.clone()));
        // What older runtimes wrote (by task index) still reads.
        let by_task = DataRecord {
            upstream: UpstreamRef::Task(7),
            ..no_key
        };
        encode_data(&by_task, &mut buf);
        assert_eq!(buf[0], DATA_BY_TASK);
        assert_eq!(decode(&buf).unwrap(), Wire::Data(by_task.clone()));
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "truncated at {cut} must fail");
        }
        // Decoding in place replaces every part of a used record.
        let mut keyed = KeyedRecord {
            group_key: b"[\"an older, longer key\"]".to_vec(),
            event_time: -1,
            inputs: vec![AggInput::Present, AggInput::Hash(3)],
            values: b"\"old\"".to_vec(),
        };
        let small = DataRecord {
            keyed: KeyedRecord {
                group_key: b"[1]".to_vec(),
                event_time: 9,
                inputs: vec![AggInput::Absent],
                values: Vec::new(),
            },
            ..by_task.clone()
        };
        encode_data(&small, &mut buf);
        let WireRef::Data(d) = decode_into(&buf, &mut keyed).unwrap() else {
            panic!("a data record");
        };
        assert_eq!(keyed, small.keyed);
        assert_eq!(
            (d.upstream, d.source_offset, d.source_key, d.source_value),
            (UpstreamRef::Task(7), 123_456, None, &b"{\"a\":1}"[..])
        );
    }

    #[test]
    fn watermarks_round_trip() {
        for upstream in [UpstreamRef::Source(3 << 40), UpstreamRef::Task(3)] {
            let w = WatermarkRecord {
                upstream,
                watermark: i64::MIN,
                idle: true,
            };
            assert_eq!(decode(&encode_watermark(&w)).unwrap(), Wire::Watermark(w));
        }
        assert!(decode(&[9]).is_err());
    }

    #[test]
    fn barriers_round_trip() {
        let w = WatermarkRecord {
            upstream: UpstreamRef::Source(0x0102_0304_0506_0708),
            watermark: 1_000,
            idle: false,
        };
        let bytes = encode_barrier(0x0102_0304_0506_0708, 1_000, false, "sp-3-17");
        // Version 5: a version-4 watermark followed by the drain's id.
        assert_eq!(
            bytes,
            hex("050807060504030201e803000000000000000700000073702d332d3137")
        );
        assert_eq!(decode(&bytes).unwrap(), Wire::Barrier(w, "sp-3-17".into()));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut} must fail");
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The bytes of every version, written down once: records that older
    /// (and newer) runtimes left in a repartition topic must keep decoding,
    /// and this runtime must keep writing what they read.
    #[test]
    fn every_version_keeps_its_bytes() {
        let data = |upstream| DataRecord {
            upstream,
            source_offset: 42,
            keyed: KeyedRecord {
                group_key: br#"["u"]"#.to_vec(),
                event_time: -5,
                inputs: vec![
                    AggInput::Absent,
                    AggInput::Present,
                    AggInput::Number(Number::Int(-9)),
                    AggInput::Number(Number::Float(2.5)),
                    AggInput::Hash(7),
                    AggInput::Text { start: 1, end: 4 },
                ],
                values: b"\"abc\"".to_vec(),
            },
            source_key: Some(b"k".to_vec()),
            source_value: b"{}".to_vec(),
        };
        let tail = "2a00000000000000fbffffffffffffff050000005b2275225d06000000000102f7ffffffffffffff03\
                    000000000000044004070000000000000005010000000400000005000000226162632201010000006b\
                    020000007b7d";
        let v1 = hex(&format!("0107000000{tail}"));
        let v3 = hex(&format!("030807060504030201{tail}"));
        let v2 = hex("0203000000ffffffffffffffff00");
        let v4 = hex("040807060504030201e80300000000000001");
        let mut buf = Vec::new();
        for (bytes, upstream) in [
            (&v1, UpstreamRef::Task(7)),
            (&v3, UpstreamRef::Source(0x0102_0304_0506_0708)),
        ] {
            let record = data(upstream);
            assert_eq!(decode(bytes).unwrap(), Wire::Data(record.clone()));
            encode_data(&record, &mut buf);
            assert_eq!(&buf, bytes);
        }
        for (bytes, w) in [
            (
                &v2,
                WatermarkRecord {
                    upstream: UpstreamRef::Task(3),
                    watermark: -1,
                    idle: false,
                },
            ),
            (
                &v4,
                WatermarkRecord {
                    upstream: UpstreamRef::Source(0x0102_0304_0506_0708),
                    watermark: 1_000,
                    idle: true,
                },
            ),
        ] {
            assert_eq!(decode(bytes).unwrap(), Wire::Watermark(w));
            assert_eq!(&encode_watermark(&w), bytes);
        }
    }
}
