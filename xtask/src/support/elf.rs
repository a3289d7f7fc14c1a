//! Just enough of a 64-bit little-endian ELF file to check what dist built
//! and what bench measures: the machine, static linking and symbols.

pub struct Elf {
    /// As `uname -m` names it: `x86_64`, `aarch64`, or `unknown`.
    pub machine: &'static str,
    /// A PT_INTERP program header: the binary is dynamically linked.
    pub has_interpreter: bool,
    /// A SHT_SYMTAB section: the binary is not stripped.
    pub has_symtab: bool,
}

impl Elf {
    pub fn parse(bytes: &[u8]) -> Option<Elf> {
        const PT_INTERP: u32 = 3;
        const SHT_SYMTAB: u32 = 2;
        if bytes.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        let u64_at = |at: usize| {
            usize::try_from(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?)).ok()
        };
        let machine = match u16_at(0x12)? {
            0x3e => "x86_64",
            0xb7 => "aarch64",
            _ => "unknown",
        };
        let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
        let (shoff, shentsize, shnum) = (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?);
        let mut has_interpreter = false;
        for i in 0..usize::from(phnum) {
            has_interpreter |= u32_at(phoff + i * usize::from(phentsize))? == PT_INTERP;
        }
        let mut has_symtab = false;
        for i in 0..usize::from(shnum) {
            has_symtab |= u32_at(shoff + i * usize::from(shentsize) + 4)? == SHT_SYMTAB;
        }
        Some(Elf {
            machine,
            has_interpreter,
            has_symtab,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_a_dynamic_binary() {
        // Any dynamically linked host program will do.
        let bytes = std::fs::read("/bin/ls").unwrap();
        let elf = Elf::parse(&bytes).unwrap();
        assert!(elf.has_interpreter);
        assert_eq!(elf.machine, std::env::consts::ARCH);
        assert!(Elf::parse(b"#!/bin/sh\n").is_none());
    }
}
