//! vLLM's KV-event wire format (`vllm/distributed/kv_events.py`), encoded by hand: a ZeroMQ
//! multipart message `[topic, seq as 8 bytes big-endian, msgpack payload]` whose payload is a
//! msgspec-encoded `KVEventBatch` of tagged `BlockStored`, `BlockRemoved` and `AllBlocksCleared`
//! events.
//!
//! vLLM has encoded its structs in more than one way: all as arrays (`array_like=True`, the
//! releases that introduced KV events: `[ts, [["BlockStored", hashes, parent, token_ids,
//! block_size, lora_id, medium, lora_name], …], dp_rank]`); in current sources the batch is still
//! an array but each event is a map with the tag under `type` (`KVCacheEvent` dropped
//! `array_like`: `[ts, [{"type": "BlockStored", "block_hashes": …}], dp_rank]`, the only form
//! vLLM's router reads); and maps throughout (`{"ts": …, "events": […], "data_parallel_rank": …}`).
//! [`Form`] picks one. Block hashes are the lab's own u64 block keys (vLLM's may be ints or bytes).

/// One event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireEvent {
    /// Consecutive blocks stored, each the child of the one before.
    Stored {
        /// The blocks' hashes, in order.
        hashes: Vec<u64>,
        /// The hash of the first block's parent; `None` for a prompt's first block.
        parent: Option<u64>,
        /// The blocks' token ids, `block_size` per block.
        token_ids: Vec<u32>,
        /// Tokens per block.
        block_size: u32,
        /// vLLM's integer adapter id (deprecated upstream, still sent).
        lora_id: Option<u32>,
        /// The adapter's name.
        lora_name: Option<String>,
    },
    /// Blocks evicted.
    Removed {
        /// Their hashes.
        hashes: Vec<u64>,
    },
    /// The whole cache was dropped.
    Cleared,
}

/// How msgspec lays out the structs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `array_like=True` throughout: fields in order, an event's tag first.
    Array,
    /// The batch an array, each event a map keyed by field name with the tag under `type`:
    /// current vLLM.
    ArrayOfMaps,
    /// Maps keyed by field name throughout, an event's tag under `type`.
    Map,
}

impl Form {
    /// How this form lays out one event.
    fn event(self) -> Form {
        match self {
            Form::ArrayOfMaps => Form::Map,
            other => other,
        }
    }
}

/// The medium vLLM names for GPU memory.
const MEDIUM_GPU: &str = "GPU";

/// The msgpack payload of one `KVEventBatch`.
pub fn encode_batch(ts: f64, events: &[WireEvent], dp_rank: Option<u32>, form: Form) -> Vec<u8> {
    let mut w = Writer::default();
    match form {
        Form::Array | Form::ArrayOfMaps => {
            // msgspec drops trailing fields equal to their default: `data_parallel_rank = None`.
            w.array(if dp_rank.is_some() { 3 } else { 2 });
            w.float(ts);
            w.array(events.len());
            for e in events {
                encode_event(&mut w, e, form.event());
            }
            if let Some(r) = dp_rank {
                w.uint(u64::from(r));
            }
        }
        Form::Map => {
            w.map(if dp_rank.is_some() { 3 } else { 2 });
            w.str("ts");
            w.float(ts);
            w.str("events");
            w.array(events.len());
            for e in events {
                encode_event(&mut w, e, form);
            }
            if let Some(r) = dp_rank {
                w.str("data_parallel_rank");
                w.uint(u64::from(r));
            }
        }
    }
    w.0
}

/// The three frames vLLM's `ZmqEventPublisher` sends for batch number `seq`.
pub fn frames(topic: &str, seq: u64, payload: Vec<u8>) -> [Vec<u8>; 3] {
    [
        topic.as_bytes().to_vec(),
        seq.to_be_bytes().to_vec(),
        payload,
    ]
}

/// The sequence number that ends a replay (`-1` as 8 bytes big-endian).
pub const END_SEQ: [u8; 8] = (-1i64).to_be_bytes();

fn encode_event(w: &mut Writer, e: &WireEvent, form: Form) {
    // Each field as (name, writer); the array form writes the values in order after the tag.
    let (tag, count) = match e {
        WireEvent::Stored { .. } => ("BlockStored", 7),
        WireEvent::Removed { .. } => ("BlockRemoved", 2),
        WireEvent::Cleared => ("AllBlocksCleared", 0),
    };
    match form {
        Form::Array | Form::ArrayOfMaps => {
            w.array(count + 1);
            w.str(tag);
        }
        Form::Map => {
            w.map(count + 1);
            w.str("type");
            w.str(tag);
        }
    }
    let key = |w: &mut Writer, name: &str| {
        if form == Form::Map {
            w.str(name);
        }
    };
    match e {
        WireEvent::Stored {
            hashes,
            parent,
            token_ids,
            block_size,
            lora_id,
            lora_name,
        } => {
            key(w, "block_hashes");
            w.array(hashes.len());
            for &h in hashes {
                w.uint(h);
            }
            key(w, "parent_block_hash");
            w.opt_uint(*parent);
            key(w, "token_ids");
            w.array(token_ids.len());
            for &t in token_ids {
                w.uint(u64::from(t));
            }
            key(w, "block_size");
            w.uint(u64::from(*block_size));
            key(w, "lora_id");
            w.opt_uint(lora_id.map(u64::from));
            key(w, "medium");
            w.str(MEDIUM_GPU);
            key(w, "lora_name");
            match lora_name {
                Some(n) => w.str(n),
                None => w.nil(),
            }
        }
        WireEvent::Removed { hashes } => {
            key(w, "block_hashes");
            w.array(hashes.len());
            for &h in hashes {
                w.uint(h);
            }
            key(w, "medium");
            w.str(MEDIUM_GPU);
        }
        WireEvent::Cleared => {}
    }
}

/// A msgpack writer for the few types the batch uses.
#[derive(Debug, Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn nil(&mut self) {
        self.0.push(0xc0);
    }

    fn float(&mut self, v: f64) {
        self.0.push(0xcb);
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn uint(&mut self, v: u64) {
        match v {
            0..=0x7f => self.0.push(v as u8),
            0x80..=0xff => self.0.extend_from_slice(&[0xcc, v as u8]),
            0x100..=0xffff => {
                self.0.push(0xcd);
                self.0.extend_from_slice(&(v as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.0.push(0xce);
                self.0.extend_from_slice(&(v as u32).to_be_bytes());
            }
            _ => {
                self.0.push(0xcf);
                self.0.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    fn opt_uint(&mut self, v: Option<u64>) {
        match v {
            Some(v) => self.uint(v),
            None => self.nil(),
        }
    }

    fn str(&mut self, s: &str) {
        let n = s.len();
        match n {
            0..=31 => self.0.push(0xa0 | n as u8),
            32..=0xff => self.0.extend_from_slice(&[0xd9, n as u8]),
            0x100..=0xffff => {
                self.0.push(0xda);
                self.0.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                self.0.push(0xdb);
                self.0.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
        self.0.extend_from_slice(s.as_bytes());
    }

    fn header(&mut self, n: usize, fix: u8, b16: u8, b32: u8) {
        match n {
            0..=15 => self.0.push(fix | n as u8),
            16..=0xffff => {
                self.0.push(b16);
                self.0.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                self.0.push(b32);
                self.0.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
    }

    fn array(&mut self, n: usize) {
        self.header(n, 0x90, 0xdc, 0xdd);
    }

    fn map(&mut self, n: usize) {
        self.header(n, 0x80, 0xde, 0xdf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a msgpack decoder reads back, for the few types written.
    #[derive(Debug, Clone, PartialEq)]
    enum V {
        Nil,
        U(u64),
        F(f64),
        S(String),
        A(Vec<V>),
        M(Vec<(V, V)>),
    }

    /// A minimal msgpack decoder, independent of the writer's code paths.
    fn decode(b: &[u8], i: &mut usize) -> V {
        let take = |i: &mut usize, n: usize| {
            let s = &b[*i..*i + n];
            *i += n;
            s
        };
        let be = |s: &[u8]| s.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
        let t = take(i, 1)[0];
        let items = |i: &mut usize, n: usize| (0..n).map(|_| decode(b, i)).collect::<Vec<_>>();
        let pairs = |i: &mut usize, n: usize| {
            (0..n)
                .map(|_| (decode(b, i), decode(b, i)))
                .collect::<Vec<_>>()
        };
        let text = |i: &mut usize, n: usize| V::S(String::from_utf8(take(i, n).to_vec()).unwrap());
        match t {
            0x00..=0x7f => V::U(u64::from(t)),
            0x80..=0x8f => V::M(pairs(i, usize::from(t & 0x0f))),
            0x90..=0x9f => V::A(items(i, usize::from(t & 0x0f))),
            0xa0..=0xbf => text(i, usize::from(t & 0x1f)),
            0xc0 => V::Nil,
            0xcb => V::F(f64::from_bits(be(take(i, 8)))),
            0xcc => V::U(be(take(i, 1))),
            0xcd => V::U(be(take(i, 2))),
            0xce => V::U(be(take(i, 4))),
            0xcf => V::U(be(take(i, 8))),
            0xd9 => {
                let n = be(take(i, 1)) as usize;
                text(i, n)
            }
            0xdc => {
                let n = be(take(i, 2)) as usize;
                V::A(items(i, n))
            }
            0xde => {
                let n = be(take(i, 2)) as usize;
                V::M(pairs(i, n))
            }
            other => panic!("unexpected msgpack type byte {other:#x}"),
        }
    }

    fn read(b: &[u8]) -> V {
        let mut i = 0;
        let v = decode(b, &mut i);
        assert_eq!(i, b.len(), "trailing bytes");
        v
    }

    fn s(x: &str) -> V {
        V::S(x.into())
    }

    fn events() -> Vec<WireEvent> {
        vec![
            WireEvent::Stored {
                hashes: vec![u64::MAX - 1, 300],
                parent: None,
                token_ids: (1..=32).collect(),
                block_size: 16,
                lora_id: None,
                lora_name: None,
            },
            WireEvent::Stored {
                hashes: vec![7],
                parent: Some(300),
                token_ids: (100..116).collect(),
                block_size: 16,
                lora_id: Some(1),
                lora_name: Some("sql-lora".into()),
            },
            WireEvent::Removed {
                hashes: vec![70_000, 5],
            },
            WireEvent::Cleared,
        ]
    }

    #[test]
    fn the_array_form_is_vllms_array_like_batch() {
        let v = read(&encode_batch(1.5, &events(), Some(0), Form::Array));
        let tokens = |r: std::ops::RangeInclusive<u64>| V::A(r.map(V::U).collect());
        assert_eq!(
            v,
            V::A(vec![
                V::F(1.5),
                V::A(vec![
                    V::A(vec![
                        s("BlockStored"),
                        V::A(vec![V::U(u64::MAX - 1), V::U(300)]),
                        V::Nil,
                        tokens(1..=32),
                        V::U(16),
                        V::Nil,
                        s("GPU"),
                        V::Nil,
                    ]),
                    V::A(vec![
                        s("BlockStored"),
                        V::A(vec![V::U(7)]),
                        V::U(300),
                        tokens(100..=115),
                        V::U(16),
                        V::U(1),
                        s("GPU"),
                        s("sql-lora"),
                    ]),
                    V::A(vec![
                        s("BlockRemoved"),
                        V::A(vec![V::U(70_000), V::U(5)]),
                        s("GPU")
                    ]),
                    V::A(vec![s("AllBlocksCleared")]),
                ]),
                V::U(0),
            ])
        );
        // Without a data-parallel rank, msgspec omits the trailing default.
        let V::A(fields) = read(&encode_batch(0.0, &[], None, Form::Array)) else {
            panic!("not an array")
        };
        assert_eq!(fields, vec![V::F(0.0), V::A(vec![])]);
    }

    #[test]
    fn the_map_form_names_every_field_and_tags_with_type() {
        let V::M(batch) = read(&encode_batch(2.0, &events()[1..3], Some(3), Form::Map)) else {
            panic!("not a map")
        };
        let keys: Vec<&V> = batch.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![&s("ts"), &s("events"), &s("data_parallel_rank")]);
        let V::A(evs) = &batch[1].1 else {
            panic!("events not an array")
        };
        let V::M(stored) = &evs[0] else {
            panic!("event not a map")
        };
        let names: Vec<V> = stored.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            names,
            [
                "type",
                "block_hashes",
                "parent_block_hash",
                "token_ids",
                "block_size",
                "lora_id",
                "medium",
                "lora_name"
            ]
            .map(s)
        );
        assert_eq!(stored[0].1, s("BlockStored"));
        assert_eq!(stored[7].1, s("sql-lora"));
        let V::M(removed) = &evs[1] else {
            panic!("event not a map")
        };
        assert_eq!(removed[0], (s("type"), s("BlockRemoved")));
    }

    #[test]
    fn current_vllm_puts_tagged_map_events_in_an_array_batch() {
        let both = &events()[1..3];
        let V::A(batch) = read(&encode_batch(2.0, both, Some(0), Form::ArrayOfMaps)) else {
            panic!("the batch is not an array")
        };
        assert_eq!((&batch[0], &batch[2]), (&V::F(2.0), &V::U(0)));
        // Each event exactly as the map form writes it.
        let V::M(mapped) = read(&encode_batch(2.0, both, Some(0), Form::Map)) else {
            panic!("not a map")
        };
        assert_eq!(batch[1], mapped[1].1);
    }

    #[test]
    fn frames_carry_the_topic_and_a_big_endian_sequence() {
        let [topic, seq, payload] = frames("kv", 258, vec![0x90]);
        assert_eq!(topic, b"kv");
        assert_eq!(seq, vec![0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(payload, vec![0x90]);
        assert_eq!(END_SEQ, [0xff; 8]);
    }

    #[test]
    fn long_lists_and_strings_use_the_wider_headers() {
        let mut w = Writer::default();
        w.array(20);
        w.str(&"x".repeat(40));
        assert_eq!(w.0[..3], [0xdc, 0, 20]);
        assert_eq!(w.0[3..5], [0xd9, 40]);
        let ids: Vec<u32> = (0..40).collect();
        let e = WireEvent::Stored {
            hashes: vec![1],
            parent: None,
            token_ids: ids,
            block_size: 40,
            lora_id: None,
            lora_name: None,
        };
        let V::A(b) = read(&encode_batch(0.0, &[e], None, Form::Array)) else {
            panic!("not an array")
        };
        let V::A(evs) = &b[1] else { panic!() };
        let V::A(stored) = &evs[0] else { panic!() };
        assert_eq!(stored[3], V::A((0..40).map(V::U).collect()));
    }
}
