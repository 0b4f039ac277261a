//! The little protobuf encoding the data directory's writers need. etcd's
//! messages are gogo-generated: fields in tag order and zero-valued
//! non-nullable fields still written (the WAL and `.snap` records), so they
//! are encoded by hand here rather than with proto3 rules that would drop
//! the zeros; the mvcc KeyValue's scalars do drop them ([`int64`],
//! [`nonempty_bytes`]).

pub fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// A varint field, written even when zero.
pub fn uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    varint(buf, u64::from(field) << 3);
    varint(buf, v);
}

/// A length-delimited field (bytes, string or embedded message).
pub fn bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    varint(buf, (u64::from(field) << 3) | 2);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// A proto3 int64 field (gogo `MarshalTo`): skipped when zero, a negative
/// value as its two's complement, a 10-byte varint.
pub fn int64(buf: &mut Vec<u8>, field: u32, v: i64) {
    if v != 0 {
        uint(buf, field, v as u64);
    }
}

/// A proto3 bytes field: skipped when empty.
pub fn nonempty_bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    if !data.is_empty() {
        bytes(buf, field, data);
    }
}

/// raftpb.ConfState with every ID a voter, as etcd's restore writes it.
pub fn conf_state(voters: &[u64]) -> Vec<u8> {
    let mut b = Vec::new();
    for &id in voters {
        uint(&mut b, 1, id);
    }
    uint(&mut b, 5, 0); // auto_leave
    b
}

/// A field's value as [`next_field`] reads it; fixed 32- and 64-bit fields
/// as their little-endian number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(u64),
}

fn read_varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *buf = &buf[i + 1..];
            return Ok(v);
        }
    }
    Err(if buf.len() < 10 { "truncated varint".into() } else { "varint longer than 10 bytes".into() })
}

/// The next field of the message in `buf` as (field number, value),
/// advancing `buf`; None at its end. Groups (wire types 3, 4) are errors.
pub fn next_field<'a>(buf: &mut &'a [u8]) -> Result<Option<(u32, Field<'a>)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    let tag = read_varint(buf)?;
    let field = u32::try_from(tag >> 3).map_err(|_| format!("field number {} too large", tag >> 3))?;
    let mut fixed = |n: usize| -> Result<Field<'a>, String> {
        if buf.len() < n {
            return Err(format!("field {field}: truncated {}-bit value", n * 8));
        }
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&buf[..n]);
        *buf = &buf[n..];
        Ok(Field::Fixed(u64::from_le_bytes(b)))
    };
    let value = match tag & 7 {
        0 => Field::Varint(read_varint(buf).map_err(|e| format!("field {field}: {e}"))?),
        1 => fixed(8)?,
        5 => fixed(4)?,
        2 => {
            let len = read_varint(buf).map_err(|e| format!("field {field}: length: {e}"))?;
            if len > buf.len() as u64 {
                return Err(format!("field {field}: {len} bytes, but {} left", buf.len()));
            }
            let (data, rest) = buf.split_at(len as usize);
            *buf = rest;
            Field::Bytes(data)
        }
        w => return Err(format!("field {field}: unsupported wire type {w}")),
    };
    Ok(Some((field, value)))
}

/// CRC-32C (Castagnoli), continuing from `crc` like Go's `crc32.Update`.
pub fn crc32c(crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !crc;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields() {
        let mut b = Vec::new();
        varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        let mut b = Vec::new();
        uint(&mut b, 1, 0);
        uint(&mut b, 2, 1);
        bytes(&mut b, 4, b"ab");
        assert_eq!(b, [0x08, 0x00, 0x10, 0x01, 0x22, 0x02, b'a', b'b']);
        assert_eq!(conf_state(&[1, 2]), [0x08, 0x01, 0x08, 0x02, 0x28, 0x00]);
    }

    #[test]
    fn proto3_fields_skip_zeros() {
        let mut b = Vec::new();
        int64(&mut b, 2, 0);
        nonempty_bytes(&mut b, 5, b"");
        assert!(b.is_empty());
        int64(&mut b, 6, -1);
        nonempty_bytes(&mut b, 1, b"k");
        assert_eq!(b, [0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x0a, 1, b'k']);
    }

    #[test]
    fn fields_read_back() {
        let mut b = Vec::new();
        uint(&mut b, 1, 300);
        bytes(&mut b, 2, b"ab");
        int64(&mut b, 3, -1);
        b.extend_from_slice(&[0x21, 1, 0, 0, 0, 0, 0, 0, 0, 0x2d, 2, 0, 0, 0]); // fixed64 4, fixed32 5
        let mut buf = &b[..];
        let mut got = Vec::new();
        while let Some(f) = next_field(&mut buf).unwrap() {
            got.push(f);
        }
        let want = [
            (1, Field::Varint(300)),
            (2, Field::Bytes(b"ab")),
            (3, Field::Varint(u64::MAX)),
            (4, Field::Fixed(1)),
            (5, Field::Fixed(2)),
        ];
        assert_eq!(got, want);
        for (bad, why) in [
            (&[0x0a, 3, b'a'][..], "field 1: 3 bytes, but 1 left"),
            (&[0x08][..], "field 1: truncated varint"),
            (&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..], "field 1: varint longer"),
            (&[0x0b][..], "field 1: unsupported wire type 3"),
            (&[0x09, 1][..], "field 1: truncated 64-bit value"),
        ] {
            let e = next_field(&mut &bad[..]).unwrap_err();
            assert!(e.starts_with(why), "{e}");
        }
    }

    #[test]
    fn crc32c_vectors() {
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(0, b""), 0);
        // Running: the same as one pass over the concatenation.
        assert_eq!(crc32c(crc32c(0, b"1234"), b"56789"), 0xE306_9283);
    }
}
