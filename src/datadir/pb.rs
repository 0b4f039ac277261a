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
    fn crc32c_vectors() {
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(0, b""), 0);
        // Running: the same as one pass over the concatenation.
        assert_eq!(crc32c(crc32c(0, b"1234"), b"56789"), 0xE306_9283);
    }
}
