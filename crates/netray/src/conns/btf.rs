//! Just enough of a BTF reader to compute kernel struct member offsets and
//! enum values at run time (aya 0.14 keeps its BTF type accessors private).
//!
//! Format: `include/uapi/linux/btf.h` (header, type section, string
//! section). Only what [`Btf::member_offset`] and [`Btf::enum_value`] need is
//! decoded; every other kind is skipped by its documented size.

use anyhow::{Context as _, anyhow, bail, ensure};

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One decoded type: its header and where its trailing data starts.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// Offset of the kind-specific data in the type section.
    extra: usize,
}

impl Type {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 != 0
    }
}

/// A parsed BTF blob (types indexed by id; id 0 is `void`).
pub struct Btf {
    types: Vec<Type>,
    type_data: Vec<u8>,
    strings: Vec<u8>,
}

fn u32_at(data: &[u8], at: usize) -> anyhow::Result<u32> {
    let bytes = data
        .get(at..at + 4)
        .ok_or_else(|| anyhow!("BTF truncated at byte {at}"))?;
    Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> anyhow::Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        Self::parse(&data).with_context(|| format!("parsing {path}"))
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> anyhow::Result<Self> {
        ensure!(
            data.len() >= 24 && data[0..2] == [0x9f, 0xeb],
            "not little-endian BTF (bad magic)"
        );
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let type_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .context("type section out of bounds")?
            .to_vec();
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("string section out of bounds")?
            .to_vec();
        let mut types = vec![Type {
            name_off: 0,
            info: 0,
            size_or_type: 0,
            extra: 0,
        }];
        let mut at = 0;
        while at < type_data.len() {
            let ty = Type {
                name_off: u32_at(&type_data, at)?,
                info: u32_at(&type_data, at + 4)?,
                size_or_type: u32_at(&type_data, at + 8)?,
                extra: at + 12,
            };
            let vlen = ty.vlen();
            let extra_len = match ty.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                other => bail!("unknown BTF kind {other} at type {}", types.len()),
            };
            at = ty.extra + extra_len;
            types.push(ty);
        }
        Ok(Self {
            types,
            type_data,
            strings,
        })
    }

    fn name(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> anyhow::Result<&Type> {
        self.types
            .get(id as usize)
            .ok_or_else(|| anyhow!("BTF type id {id} out of range"))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> anyhow::Result<u32> {
        for _ in 0..32 {
            let ty = self.ty(id)?;
            match ty.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Ok(id),
            }
        }
        bail!("BTF type chain too long at id {id}")
    }

    fn struct_id(&self, name: &str) -> anyhow::Result<u32> {
        self.types
            .iter()
            .position(|t| t.kind() == KIND_STRUCT && t.vlen() > 0 && self.name(t.name_off) == name)
            .map(|i| i as u32)
            .ok_or_else(|| anyhow!("struct {name} not in the kernel's BTF"))
    }

    /// Byte offset and size of member `member` of struct `strukt`, looking
    /// into anonymous struct/union members.
    pub fn member(&self, strukt: &str, member: &str) -> anyhow::Result<(u32, u32)> {
        let id = self.struct_id(strukt)?;
        let (bits, ty) = self
            .find_member(id, member, 0)?
            .ok_or_else(|| anyhow!("struct {strukt} has no member {member}"))?;
        ensure!(
            bits % 8 == 0,
            "{strukt}.{member} is a bitfield (bit offset {bits})"
        );
        Ok((bits / 8, self.size(ty)?))
    }

    /// Byte offset of member `member` of struct `strukt`.
    pub fn member_offset(&self, strukt: &str, member: &str) -> anyhow::Result<u32> {
        Ok(self.member(strukt, member)?.0)
    }

    fn find_member(&self, id: u32, member: &str, depth: u32) -> anyhow::Result<Option<(u32, u32)>> {
        ensure!(depth < 8, "anonymous members nested too deep");
        let ty = *self.ty(id)?;
        if ty.kind() != KIND_STRUCT && ty.kind() != KIND_UNION {
            return Ok(None);
        }
        for i in 0..ty.vlen() {
            let at = ty.extra + 12 * i;
            let name_off = u32_at(&self.type_data, at)?;
            let member_ty = u32_at(&self.type_data, at + 4)?;
            let raw_offset = u32_at(&self.type_data, at + 8)?;
            let bits = if ty.kind_flag() {
                raw_offset & 0x00ff_ffff
            } else {
                raw_offset
            };
            if name_off == 0 {
                let inner = self.resolve(member_ty)?;
                if let Some((off, t)) = self.find_member(inner, member, depth + 1)? {
                    return Ok(Some((bits + off, t)));
                }
            } else if self.name(name_off) == member {
                return Ok(Some((bits, member_ty)));
            }
        }
        Ok(None)
    }

    /// Size in bytes of type `id` (ints, pointers, structs, enums).
    fn size(&self, id: u32) -> anyhow::Result<u32> {
        let id = self.resolve(id)?;
        let ty = self.ty(id)?;
        Ok(match ty.kind() {
            KIND_PTR => 8,
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                ty.size_or_type
            }
            KIND_ARRAY => {
                let elem = u32_at(&self.type_data, ty.extra)?;
                let n = u32_at(&self.type_data, ty.extra + 8)?;
                self.size(elem)? * n
            }
            other => bail!("no size for BTF kind {other}"),
        })
    }

    /// Value of enumerator `name` (searched in every enum).
    pub fn enum_value(&self, name: &str) -> anyhow::Result<i64> {
        for ty in &self.types {
            match ty.kind() {
                KIND_ENUM => {
                    for i in 0..ty.vlen() {
                        let at = ty.extra + 8 * i;
                        if self.name(u32_at(&self.type_data, at)?) == name {
                            return Ok(i64::from(u32_at(&self.type_data, at + 4)? as i32));
                        }
                    }
                }
                KIND_ENUM64 => {
                    for i in 0..ty.vlen() {
                        let at = ty.extra + 12 * i;
                        if self.name(u32_at(&self.type_data, at)?) == name {
                            let lo = u64::from(u32_at(&self.type_data, at + 4)?);
                            let hi = u64::from(u32_at(&self.type_data, at + 8)?);
                            return Ok(((hi << 32) | lo) as i64);
                        }
                    }
                }
                _ => {}
            }
        }
        bail!("enumerator {name} not in the kernel's BTF")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `struct s { int a; union { long b; }; }`, an enum.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0long\0e\0X\0Y\0".to_vec();
        let name = |s: &str| -> u32 {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let push = |t: &mut Vec<u8>, words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes)
        push(&mut t, &[name("int"), KIND_INT << 24, 4, 32]);
        // 2: long (8 bytes)
        push(&mut t, &[name("long"), KIND_INT << 24, 8, 64]);
        // 3: anonymous union { long b; } at offset 0
        push(&mut t, &[0, (KIND_UNION << 24) | 1, 8, name("b"), 2, 0]);
        // 4: struct s { int a; union {...} @ 64 bits }
        push(
            &mut t,
            &[
                name("s"),
                (KIND_STRUCT << 24) | 2,
                16,
                name("a"),
                1,
                0,
                0,
                3,
                64,
            ],
        );
        // 5: enum e { X = 0, Y = 7 }
        push(
            &mut t,
            &[
                name("e"),
                (KIND_ENUM << 24) | 2,
                4,
                name("X"),
                0,
                name("Y"),
                7,
            ],
        );
        let mut blob = Vec::new();
        blob.extend_from_slice(&[0x9f, 0xeb, 1, 0]);
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(&t);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member("s", "a").unwrap(), (0, 4));
        assert_eq!(btf.member("s", "b").unwrap(), (8, 8));
        assert!(btf.member("s", "c").is_err());
        assert!(btf.member("t", "a").is_err());
        assert_eq!(btf.enum_value("Y").unwrap(), 7);
        assert!(btf.enum_value("Z").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"hello world, not btf at all").is_err());
    }
}
