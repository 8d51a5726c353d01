//! An in-memory transaction log with Kafka's semantics where the protocol
//! relies on them (tests only): records get offsets in their partition as
//! they are written; a transaction's records become visible to read_committed
//! readers at its commit, and records of aborted transactions never do; a
//! reader stops at the first record of a transaction still open (the last
//! stable offset); fencing a transactional id bumps its epoch and aborts its
//! open transaction, and a writer of an older epoch is refused.

use crate::error::Result;
use crate::error::RuntimeError;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use super::marker::Marker;
use super::protocol::{Delivered, Record, TaskLog};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Committed,
    Aborted,
}

/// One record as stored.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    state: State,
    /// (transactional id, transaction number) of the writer's transaction.
    txn: Option<(String, u64)>,
}

/// The broker: topics with a fixed number of partitions.
#[derive(Default)]
pub struct Broker {
    partitions: BTreeMap<String, Vec<Vec<Entry>>>,
    epochs: HashMap<String, u64>,
    next_txn: u64,
}

pub type Shared = Rc<RefCell<Broker>>;

impl Broker {
    pub fn with_topics(topics: &[(&str, usize)]) -> Shared {
        let mut b = Broker::default();
        for (name, n) in topics {
            b.partitions.insert(name.to_string(), vec![Vec::new(); *n]);
        }
        Rc::new(RefCell::new(b))
    }

    fn partition(&mut self, topic: &str, p: i32) -> Result<&mut Vec<Entry>> {
        self.partitions
            .get_mut(topic)
            .and_then(|ps| ps.get_mut(usize::try_from(p).ok()?))
            .ok_or_else(|| RuntimeError::Kafka(format!("no partition {topic}-{p}")))
    }

    /// Committed records of `topic`-`p` from offset `from` up to the last
    /// stable offset, with their offsets (read_committed).
    pub fn read_committed(&self, topic: &str, p: i32, from: i64) -> Vec<(i64, Entry)> {
        let Some(entries) = self.partitions.get(topic).and_then(|ps| ps.get(p as usize)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (offset, e) in entries.iter().enumerate().skip(from.max(0) as usize) {
            match e.state {
                State::Open => break,
                State::Committed => out.push((offset as i64, e.clone())),
                State::Aborted => {}
            }
        }
        out
    }

    /// Every committed record of every partition of `topic`.
    pub fn committed(&self, topic: &str) -> Vec<Entry> {
        let n = self.partitions.get(topic).map_or(0, Vec::len);
        (0..n as i32)
            .flat_map(|p| self.read_committed(topic, p, 0))
            .map(|(_, e)| e)
            .collect()
    }

    /// Records of transactions still open, anywhere.
    pub fn open_records(&self) -> usize {
        self.partitions
            .values()
            .flatten()
            .flatten()
            .filter(|e| e.state == State::Open)
            .count()
    }
}

/// A task's writer: transactional (one epoch of `id`) or idempotent only.
pub struct FakeLog {
    broker: Shared,
    id: String,
    epoch: Option<u64>,
    transactional: bool,
    open: Option<u64>,
    control: String,
    task: u32,
    delivered: Delivered,
}

impl FakeLog {
    pub fn new(broker: &Shared, id: &str, transactional: bool, control: &str, task: u32) -> FakeLog {
        FakeLog {
            broker: broker.clone(),
            id: id.to_string(),
            epoch: None,
            transactional,
            open: None,
            control: control.to_string(),
            task,
            delivered: Delivered::new(),
        }
    }

    fn check_epoch(&self) -> Result<()> {
        let current = self.broker.borrow().epochs.get(&self.id).copied();
        if self.transactional && self.epoch != current {
            return Err(RuntimeError::Kafka(format!(
                "ProducerFenced: {} epoch {:?} is older than {current:?}",
                self.id, self.epoch
            )));
        }
        Ok(())
    }
}

impl TaskLog for FakeLog {
    fn fence(&mut self) -> Result<()> {
        let mut b = self.broker.borrow_mut();
        let epoch = b.epochs.entry(self.id.clone()).or_default();
        *epoch += 1;
        self.epoch = Some(*epoch);
        let id = self.id.clone();
        for e in b.partitions.values_mut().flatten().flatten() {
            if e.state == State::Open && e.txn.as_ref().is_some_and(|(i, _)| *i == id) {
                e.state = State::Aborted;
            }
        }
        Ok(())
    }

    fn last_marker(&mut self, job_uid: &str) -> Result<Option<Marker>> {
        let b = self.broker.borrow();
        let mut last = None;
        for (_, e) in b.read_committed(&self.control, self.task as i32, 0) {
            let m: Marker = serde_json::from_slice(&e.value)?;
            last = (m.job_uid == job_uid).then_some(m);
        }
        Ok(last)
    }

    fn begin(&mut self) -> Result<()> {
        self.check_epoch()?;
        if self.open.is_some() {
            return Err(RuntimeError::Kafka("a transaction is already open".into()));
        }
        let mut b = self.broker.borrow_mut();
        b.next_txn += 1;
        self.open = Some(b.next_txn);
        Ok(())
    }

    fn send(&mut self, r: &Record<'_>) -> Result<()> {
        self.check_epoch()?;
        let txn = match (self.transactional, self.open) {
            (true, None) => {
                return Err(RuntimeError::Kafka(
                    "a transactional producer writes only in a transaction".into(),
                ));
            }
            (true, Some(n)) => Some((self.id.clone(), n)),
            (false, _) => None,
        };
        let partition = r.partition.unwrap_or(0);
        let entry = Entry {
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.to_vec(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            state: if txn.is_some() {
                State::Open
            } else {
                State::Committed
            },
            txn,
        };
        self.broker
            .borrow_mut()
            .partition(r.topic, partition)?
            .push(entry);
        *self
            .delivered
            .entry(r.topic.to_string())
            .or_default()
            .entry(partition)
            .or_default() += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<Delivered> {
        Ok(std::mem::take(&mut self.delivered))
    }

    fn commit(&mut self) -> Result<()> {
        self.check_epoch()?;
        let n = self
            .open
            .take()
            .ok_or_else(|| RuntimeError::Kafka("no transaction to commit".into()))?;
        let mut b = self.broker.borrow_mut();
        for e in b.partitions.values_mut().flatten().flatten() {
            if e.txn.as_ref().is_some_and(|(i, t)| *i == self.id && *t == n) {
                e.state = State::Committed;
            }
        }
        Ok(())
    }
}
