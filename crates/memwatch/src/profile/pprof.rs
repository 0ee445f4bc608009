//! pprof protobuf (google/pprof `profile.proto`), encoded and decoded by hand: the subset a
//! heap profile uses, in ~250 lines instead of a code generator and its runtime.
//!
//! Sample types are `inuse_objects/count` and `inuse_space/bytes` (the names `go tool pprof`
//! uses for Go heap profiles, so `-sample_index` works the same), period type `space/bytes`.

use std::collections::HashMap;

use super::{Frame, Location, Mapping, Profile, ProfileError, Sample};

impl Profile {
    /// The profile as pprof protobuf (not compressed).
    pub fn to_pprof(&self) -> Vec<u8> {
        let mut strings = Strings::default();
        let mut out = Vec::new();
        let value_type = |strings: &mut Strings, kind: &str, unit: &str| {
            let mut m = Vec::new();
            put_uint(&mut m, 1, strings.id(kind));
            put_uint(&mut m, 2, strings.id(unit));
            m
        };
        let objects = value_type(&mut strings, "inuse_objects", "count");
        put_bytes(&mut out, 1, &objects);
        let space = value_type(&mut strings, "inuse_space", "bytes");
        put_bytes(&mut out, 1, &space);

        let mut m = Vec::new();
        for s in &self.samples {
            m.clear();
            put_packed(&mut m, 1, s.locations.iter().map(|&i| i as u64 + 1));
            put_packed(&mut m, 2, [s.objects as u64, s.bytes as u64].into_iter());
            put_bytes(&mut out, 2, &m);
        }
        for (i, map) in self.mappings.iter().enumerate() {
            m.clear();
            put_uint(&mut m, 1, i as u64 + 1);
            put_uint(&mut m, 2, map.start);
            put_uint(&mut m, 3, map.limit);
            put_uint(&mut m, 4, map.file_offset);
            put_uint(&mut m, 5, strings.id(&map.path));
            put_uint(&mut m, 6, strings.id(map.build_id.as_deref().unwrap_or("")));
            let symbolized = self
                .locations
                .iter()
                .any(|l| l.mapping == Some(i) && !l.frames.is_empty());
            put_uint(&mut m, 7, u64::from(symbolized));
            put_bytes(&mut out, 3, &m);
        }
        let mut functions: HashMap<(&str, &str), u64> = HashMap::new();
        let mut function_list: Vec<(u64, u64)> = Vec::new(); // (name id, file id)
        let mut line = Vec::new();
        for (i, loc) in self.locations.iter().enumerate() {
            m.clear();
            put_uint(&mut m, 1, i as u64 + 1);
            put_uint(&mut m, 2, loc.mapping.map_or(0, |m| m as u64 + 1));
            put_uint(&mut m, 3, loc.address);
            for frame in &loc.frames {
                let file = frame.file.as_deref().unwrap_or("");
                let next = function_list.len() as u64 + 1;
                let id = *functions
                    .entry((&frame.function, file))
                    .or_insert_with(|| next);
                if id == next {
                    function_list.push((strings.id(&frame.function), strings.id(file)));
                }
                line.clear();
                put_uint(&mut line, 1, id);
                put_uint(&mut line, 2, u64::from(frame.line));
                put_bytes(&mut m, 4, &line);
            }
            put_bytes(&mut out, 4, &m);
        }
        for (i, &(name, file)) in function_list.iter().enumerate() {
            m.clear();
            put_uint(&mut m, 1, i as u64 + 1);
            put_uint(&mut m, 2, name);
            // No system_name: names are already demangled, and pprof's symbolizer re-demangles
            // a function whose name equals its system name, cutting every `<…>` out of a Rust
            // name with its C++ heuristic. A name with an empty system name is left alone.
            put_uint(&mut m, 4, file);
            put_bytes(&mut out, 5, &m);
        }
        let period_type = value_type(&mut strings, "space", "bytes");
        let default_type = strings.id("inuse_space");
        for s in &strings.list {
            put_bytes(&mut out, 6, s.as_bytes());
        }
        put_uint(&mut out, 9, self.time_nanos as u64);
        put_bytes(&mut out, 11, &period_type);
        put_uint(&mut out, 12, self.sample_period);
        put_uint(&mut out, 14, default_type);
        out
    }

    /// Decodes a pprof protobuf (not compressed). Values are read from the `inuse_space` and
    /// `inuse_objects` sample types when present, else the last and first values.
    pub fn from_pprof(bytes: &[u8]) -> Result<Profile, ProfileError> {
        let bad = ProfileError::Pprof;
        let mut strings: Vec<&str> = Vec::new();
        let (mut types, mut raw_samples, mut raw_maps, mut raw_locs, mut raw_funcs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut profile = Profile::default();
        let mut r = Reader(bytes);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (1, Value::Bytes(b)) => types.push(b),
                (2, Value::Bytes(b)) => raw_samples.push(b),
                (3, Value::Bytes(b)) => raw_maps.push(b),
                (4, Value::Bytes(b)) => raw_locs.push(b),
                (5, Value::Bytes(b)) => raw_funcs.push(b),
                (6, Value::Bytes(b)) => {
                    strings.push(std::str::from_utf8(b).map_err(|_| bad("string not UTF-8"))?);
                }
                (9, Value::Varint(v)) => profile.time_nanos = v as i64,
                (12, Value::Varint(v)) => profile.sample_period = v,
                _ => {}
            }
        }
        if strings.first() != Some(&"") {
            return Err(bad("no string table"));
        }
        let string = |id: u64| -> Result<&str, ProfileError> {
            let id = usize::try_from(id).map_err(|_| bad("string index"))?;
            strings
                .get(id)
                .copied()
                .ok_or(bad("string index out of range"))
        };
        let mut type_names = Vec::new();
        for t in types {
            let f = fields(t)?;
            type_names.push(string(f.uint(1))?);
        }
        let position = |name: &str| type_names.iter().position(|&t| t == name);
        let bytes_at = position("inuse_space").unwrap_or(type_names.len().saturating_sub(1));
        let objects_at = position("inuse_objects").unwrap_or(0);

        let mut mapping_index = HashMap::new();
        for b in raw_maps {
            let f = fields(b)?;
            mapping_index.insert(f.uint(1), profile.mappings.len());
            let build_id = string(f.uint(6))?;
            profile.mappings.push(Mapping {
                start: f.uint(2),
                limit: f.uint(3),
                file_offset: f.uint(4),
                path: string(f.uint(5))?.to_owned(),
                build_id: (!build_id.is_empty()).then(|| build_id.to_owned()),
            });
        }
        let mut functions = HashMap::new();
        for b in raw_funcs {
            let f = fields(b)?;
            let file = string(f.uint(4))?;
            let file = (!file.is_empty()).then(|| file.to_owned());
            functions.insert(f.uint(1), (string(f.uint(2))?.to_owned(), file));
        }
        let mut location_index = HashMap::new();
        for b in raw_locs {
            let f = fields(b)?;
            location_index.insert(f.uint(1), profile.locations.len());
            let mut frames = Vec::new();
            for line in f.all(4) {
                let l = fields(line)?;
                let (name, file) = functions.get(&l.uint(1)).ok_or(bad("unknown function"))?;
                frames.push(Frame {
                    function: name.clone(),
                    file: file.clone(),
                    line: u32::try_from(l.uint(2)).unwrap_or(0),
                });
            }
            let mapping = match f.uint(2) {
                0 => None,
                id => Some(*mapping_index.get(&id).ok_or(bad("unknown mapping"))?),
            };
            profile.locations.push(Location {
                address: f.uint(3),
                mapping,
                frames,
            });
        }
        for b in raw_samples {
            let f = fields(b)?;
            let locations = f
                .repeated(1)?
                .iter()
                .map(|id| {
                    location_index
                        .get(id)
                        .copied()
                        .ok_or(bad("unknown location"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let values = f.repeated(2)?;
            let value = |i: usize| values.get(i).map_or(0, |&v| v as i64);
            profile.samples.push(Sample {
                locations,
                objects: value(objects_at),
                bytes: value(bytes_at),
            });
        }
        Ok(profile)
    }
}

/// Whether `bytes` starts like a protobuf message whose first field is `sample_type`, as
/// every pprof encoder writes it.
pub(crate) fn looks_like_pprof(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x0a)
}

/// The string table under construction; index 0 is always "".
struct Strings {
    /// Strings in table order.
    list: Vec<String>,
    /// Index of each string, to intern.
    ids: HashMap<String, u64>,
}

impl Default for Strings {
    fn default() -> Self {
        Strings {
            list: vec![String::new()],
            ids: HashMap::from([(String::new(), 0)]),
        }
    }
}

impl Strings {
    fn id(&mut self, s: &str) -> u64 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.list.len() as u64;
        self.list.push(s.to_owned());
        self.ids.insert(s.to_owned(), id);
        id
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint field; zero is the default and is not written.
fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_varint(out, u64::from(field) << 3);
        put_varint(out, v);
    }
}

fn put_bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn put_packed(out: &mut Vec<u8>, field: u32, values: impl Iterator<Item = u64>) {
    let mut packed = Vec::new();
    for v in values {
        put_varint(&mut packed, v);
    }
    put_bytes(out, field, &packed);
}

/// One decoded field value; fixed-width ones are skipped (the subset has none).
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Reads fields off a message; every length is checked against what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProfileError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .0
                .split_first()
                .ok_or(ProfileError::Pprof("truncated"))?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(ProfileError::Pprof("varint too long"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], ProfileError> {
        let n = usize::try_from(n).map_err(|_| ProfileError::Pprof("length"))?;
        if n > self.0.len() {
            return Err(ProfileError::Pprof("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>, ProfileError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.take(8).map(|_| Value::Fixed)?,
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => self.take(4).map(|_| Value::Fixed)?,
            _ => return Err(ProfileError::Pprof("bad wire type")),
        };
        Ok(Some((key >> 3, value)))
    }
}

/// A small message's fields, decoded once.
struct Fields<'a>(Vec<(u64, Value<'a>)>);

fn fields(bytes: &[u8]) -> Result<Fields<'_>, ProfileError> {
    let mut r = Reader(bytes);
    let mut all = Vec::new();
    while let Some(f) = r.next()? {
        all.push(f);
    }
    Ok(Fields(all))
}

impl<'a> Fields<'a> {
    /// The last value of a varint field, 0 when absent.
    fn uint(&self, field: u64) -> u64 {
        self.0
            .iter()
            .rev()
            .find_map(|(f, v)| match v {
                Value::Varint(v) if *f == field => Some(*v),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// Every length-delimited value of `field`.
    fn all(&self, field: u64) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.0.iter().filter_map(move |(f, v)| match v {
            Value::Bytes(b) if *f == field => Some(*b),
            _ => None,
        })
    }

    /// A repeated varint field, packed or not.
    fn repeated(&self, field: u64) -> Result<Vec<u64>, ProfileError> {
        let mut out = Vec::new();
        for (f, v) in &self.0 {
            match v {
                Value::Varint(v) if *f == field => out.push(*v),
                Value::Bytes(b) if *f == field => {
                    let mut r = Reader(b);
                    while !r.0.is_empty() {
                        out.push(r.varint()?);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}
