//! Minimal pickle virtual machine: enough of protocols 2-5 to read torch state_dicts.
//!
//! Classes are never instantiated: GLOBAL yields `Value::Global`, REDUCE/NEWOBJ yield
//! `Value::Call`, and the torch layer interprets the few calls it understands
//! (`_rebuild_tensor_v2`, `OrderedDict`, ...). Persistent ids are kept as `Value::PersId`.
use crate::model::error::{ModelError, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Insertion-ordered (pickle dicts and OrderedDicts alike).
    Dict(Vec<(Value, Value)>),
    Global {
        module: String,
        name: String,
    },
    /// `func(*args)`, left for the caller to interpret.
    Call {
        func: Box<Value>,
        args: Vec<Value>,
    },
    PersId(Box<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    /// Elements of a tuple or list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }
    pub fn is_global(&self, module: &str, name: &str) -> bool {
        matches!(self, Value::Global { module: m, name: n } if m == module && n == name)
    }
    /// Whether `f` holds for every value directly inside this one.
    fn all_children(&self, mut f: impl FnMut(&Value) -> bool) -> bool {
        match self {
            Value::List(xs) | Value::Tuple(xs) => xs.iter().all(&mut f),
            Value::Dict(kv) => kv.iter().all(|(k, v)| f(k) && f(v)),
            Value::Call { func, args } => f(func) && args.iter().all(&mut f),
            Value::PersId(v) => f(v),
            _ => true,
        }
    }
}

/// Deepest nesting a pickle may build. torch state_dicts nest a few
/// levels; a deeper value (a run of TUPLE1, say) would overflow the stack
/// when dropped or printed.
pub const MAX_DEPTH: usize = 100;

/// Bytes the memo and DUP may copy in one pickle (the memo stores copies):
/// copies of copies double, so a few hundred bytes could ask for terabytes.
pub const COPY_BUDGET: usize = 64 << 20;

/// Whether `v` nests at most `limit` levels (a leaf is one level).
fn within_depth(v: &Value, limit: usize) -> bool {
    limit > 0 && v.all_children(|c| within_depth(c, limit - 1))
}

/// Fails unless every value of `items` may be put inside another.
fn nestable<'v>(items: impl IntoIterator<Item = &'v Value>) -> Result<()> {
    if items.into_iter().all(|v| within_depth(v, MAX_DEPTH - 1)) {
        Ok(())
    } else {
        err(format!("values nest deeper than {MAX_DEPTH} levels"))
    }
}

/// Takes what copying `v` costs (about 64 bytes a value, plus its text)
/// from `left`; false when that runs out.
fn charge(v: &Value, left: &mut usize) -> bool {
    let text = match v {
        Value::Str(s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::Global { module, name } => module.len() + name.len(),
        _ => 0,
    };
    match left.checked_sub(64 + text) {
        Some(l) => *left = l,
        None => return false,
    }
    v.all_children(|c| charge(c, left))
}

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(ModelError::Pickle(msg.into()))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(e) => {
                let s = &self.buf[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => err(format!("truncated stream at byte {}", self.pos)),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.buf[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return err("unterminated text line");
        };
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|e| ModelError::Pickle(e.to_string()))
    }
    fn string(&mut self, n: usize) -> Result<String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| ModelError::Pickle(e.to_string()))
    }
}

/// Unpickles one object from `buf`; returns it and the number of bytes consumed
/// (legacy torch files hold several pickles back to back).
///
/// The memo stores copies, not shared references: an object memoised before it is
/// filled (an empty dict) and fetched again later would come back empty. torch
/// state_dicts only re-fetch finished values (storage classes, tensors), so this holds.
pub fn unpickle(buf: &[u8]) -> Result<(Value, usize)> {
    let mut r = Reader { buf, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: std::collections::HashMap<u64, Value> = Default::default();
    let mut copy_budget = COPY_BUDGET;
    // A copy of `v` for the memo or DUP, within the budget.
    let mut copy = |v: &Value| -> Result<Value> {
        if charge(v, &mut copy_budget) {
            Ok(v.clone())
        } else {
            err(format!(
                "the pickle copies more than {COPY_BUDGET} bytes of values through its memo"
            ))
        }
    };

    fn pop(stack: &mut Vec<Value>) -> Result<Value> {
        stack.pop().map_or_else(|| err("stack underflow"), Ok)
    }
    fn pop_mark(stack: &mut Vec<Value>, marks: &mut Vec<usize>) -> Result<Vec<Value>> {
        let Some(m) = marks.pop() else {
            return err("MARK missing");
        };
        if m > stack.len() {
            return err("MARK beyond stack");
        }
        Ok(stack.split_off(m))
    }
    fn top(stack: &mut [Value]) -> Result<&mut Value> {
        stack.last_mut().map_or_else(|| err("stack underflow"), Ok)
    }
    fn dict_extend(target: &mut Value, items: Vec<Value>) -> Result<()> {
        nestable(&items)?;
        let pairs = items.len() / 2;
        let mut it = items.into_iter();
        let kv: Vec<(Value, Value)> = (0..pairs)
            .filter_map(|_| Some((it.next()?, it.next()?)))
            .collect();
        match target {
            Value::Dict(d) => d.extend(kv),
            // OrderedDict() etc.: a call result that gets items set on it.
            Value::Call { args, .. } => {
                args.push(Value::Dict(kv));
            }
            other => return err(format!("SETITEM(S) on non-dict {other:?}")),
        }
        Ok(())
    }

    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.le::<8>()?; // FRAME: length hint only
            }
            b'.' => {
                let v = pop(&mut stack)?;
                return Ok((v, r.pos));
            }
            b'(' => marks.push(stack.len()),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack.push(Value::Int(i32::from_le_bytes(r.le()?) as i64)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(u16::from_le_bytes(r.le()?) as i64)),
            0x8a => {
                // LONG1: little-endian two's complement of n bytes
                let n = r.u8()? as usize;
                let bytes = r.take(n)?;
                if n > 8 {
                    // Only the magic number in legacy files is this wide; keep it exact as text.
                    stack.push(Value::Str(format!("long:{}", hex(bytes))));
                } else {
                    let mut v: i64 = 0;
                    for (i, b) in bytes.iter().enumerate() {
                        v |= (*b as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    stack.push(Value::Int(v));
                }
            }
            b'I' => {
                let l = r.line()?;
                let v = match l {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(
                        l.parse()
                            .map_err(|_| ModelError::Pickle(format!("bad INT {l}")))?,
                    ),
                };
                stack.push(v);
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(r.le()?))),
            b'X' => {
                let n = u32::from_le_bytes(r.le()?) as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            0x8d => {
                let n = u64::from_le_bytes(r.le()?) as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            b'U' => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            b'T' => {
                let n = u32::from_le_bytes(r.le()?) as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'B' => {
                let n = u32::from_le_bytes(r.le()?) as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'}' => stack.push(Value::Dict(vec![])),
            b']' => stack.push(Value::List(vec![])),
            b')' => stack.push(Value::Tuple(vec![])),
            0x8f => stack.push(Value::List(vec![])), // EMPTY_SET: a list is fine here
            b'd' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                let mut d = Value::Dict(vec![]);
                dict_extend(&mut d, items)?;
                stack.push(d);
            }
            b'l' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                nestable(&items)?;
                stack.push(Value::List(items));
            }
            b't' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                nestable(&items)?;
                stack.push(Value::Tuple(items));
            }
            0x91 => {
                let items = pop_mark(&mut stack, &mut marks)?;
                nestable(&items)?;
                stack.push(Value::List(items)); // FROZENSET
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return err("stack underflow in TUPLEn");
                }
                let items = stack.split_off(stack.len() - n);
                nestable(&items)?;
                stack.push(Value::Tuple(items));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                nestable([&v])?;
                match top(&mut stack)? {
                    Value::List(l) => l.push(v),
                    other => return err(format!("APPEND on {other:?}")),
                }
            }
            b'e' | 0x90 => {
                let items = pop_mark(&mut stack, &mut marks)?;
                nestable(&items)?;
                match top(&mut stack)? {
                    Value::List(l) => l.extend(items),
                    other => return err(format!("APPENDS on {other:?}")),
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                dict_extend(top(&mut stack)?, vec![k, v])?;
            }
            b'u' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                dict_extend(top(&mut stack)?, items)?;
            }
            b'c' => {
                let module = r.line()?.to_string();
                let name = r.line()?.to_string();
                stack.push(Value::Global { module, name });
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(module), Value::Str(name)) => {
                        stack.push(Value::Global { module, name })
                    }
                    _ => return err("STACK_GLOBAL needs two strings"),
                }
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let func = pop(&mut stack)?;
                let args = match args {
                    Value::Tuple(a) => a,
                    other => return err(format!("REDUCE args not a tuple: {other:?}")),
                };
                nestable(args.iter().chain([&func]))?;
                stack.push(Value::Call {
                    func: Box::new(func),
                    args,
                });
            }
            b'b' => {
                // BUILD sets object state (e.g. OrderedDict._metadata); tensors never need it.
                pop(&mut stack)?;
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                nestable([&pid])?;
                stack.push(Value::PersId(Box::new(pid)));
            }
            b'q' => {
                let k = r.u8()? as u64;
                memo.insert(k, copy(top(&mut stack)?)?);
            }
            b'r' => {
                let k = u32::from_le_bytes(r.le()?) as u64;
                memo.insert(k, copy(top(&mut stack)?)?);
            }
            0x94 => {
                let k = memo.len() as u64;
                memo.insert(k, copy(top(&mut stack)?)?);
            }
            b'h' | b'j' => {
                let k = if op == b'h' {
                    r.u8()? as u64
                } else {
                    u32::from_le_bytes(r.le()?) as u64
                };
                match memo.get(&k) {
                    Some(v) => stack.push(copy(v)?),
                    None => return err(format!("memo key {k} unset")),
                }
            }
            b'0' => {
                pop(&mut stack)?;
            }
            b'2' => {
                let v = copy(top(&mut stack)?)?;
                stack.push(v);
            }
            other => {
                return err(format!(
                    "unsupported opcode 0x{other:02x} at byte {}",
                    r.pos - 1
                ))
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().rev().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_protocol2_dict_with_memo_and_tuples() {
        // pickle.dumps({'a': (1, -2, 300), 'b': [1.5, None, True]}, protocol=2)
        let bytes: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01J\xfe\xff\xff\xffM,\x01\x87q\x02X\x01\x00\x00\x00bq\x03]q\x04(G?\xf8\x00\x00\x00\x00\x00\x00N\x88eh\x01\x8a\x01\xffu.";
        let (v, used) = unpickle(bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            v,
            Value::Dict(vec![
                (
                    Value::Str("a".into()),
                    Value::Tuple(vec![Value::Int(1), Value::Int(-2), Value::Int(300)])
                ),
                (
                    Value::Str("b".into()),
                    Value::List(vec![Value::Float(1.5), Value::None, Value::Bool(true)])
                ),
                (Value::Str("a".into()), Value::Int(-1)),
            ])
        );
    }

    /// Each a short pickle that would build a value nested deeper than the
    /// stack allows (a repeated byte: a fuzzer's first move).
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let cases: [(&str, Vec<u8>); 4] = [
            ("TUPLE1 run", [&b"N"[..], &[0x85; 200_000]].concat()),
            ("BINPERSID run", [&b"N"[..], &b"Q".repeat(200_000)].concat()),
            (
                "MARK run, LIST run",
                [b"(".repeat(100_000), b"l".repeat(100_000)].concat(),
            ),
            (
                "APPEND of nested tuples",
                [&b"]N"[..], &[0x85; 200_000], b"a"].concat(),
            ),
        ];
        for (what, mut bytes) in cases {
            bytes.push(b'.');
            let e = unpickle(&bytes).unwrap_err().to_string();
            assert!(e.contains("nest deeper than 100"), "{what}: {e}");
        }
        // Up to the limit is fine.
        let mut ok = b"N".to_vec();
        ok.extend([0x85; MAX_DEPTH - 1]);
        ok.push(b'.');
        assert!(unpickle(&ok).is_ok());
    }

    /// Copies of copies through the memo and DUP: a few bytes asking for
    /// 2^40 values, refused once the copy budget is spent.
    #[test]
    fn memo_and_dup_doubling_is_an_error_not_a_memory_bomb() {
        // EMPTY_LIST, then (DUP, APPEND) x 60: the list doubles each time.
        let mut dup = b"]".to_vec();
        dup.extend(b"2a".repeat(60));
        dup.push(b'.');
        // EMPTY_LIST, PUT 0, then (MARK, GET 0, GET 0, LIST, PUT 0) x 60.
        let mut memo = b"]q\x00".to_vec();
        memo.extend(b"(h\x00h\x00lq\x00".repeat(60));
        memo.push(b'.');
        for (what, bytes) in [("DUP", dup), ("memo", memo)] {
            let e = unpickle(&bytes).unwrap_err().to_string();
            assert!(e.contains("copies more than"), "{what}: {e}");
        }
    }

    #[test]
    fn truncated_stream_is_an_error() {
        assert!(matches!(
            unpickle(b"\x80\x02}q"),
            Err(ModelError::Pickle(_))
        ));
    }
}
