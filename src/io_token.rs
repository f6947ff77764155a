//! Tokens of the mio event loop: the kind of source in the top byte, its id below.

use mio::Token;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Listener,
    Signals,
    Connection,
    AgentOut,
    AgentIn,
    /// Worker threads finished a job.
    Jobs,
}

const SHIFT: u32 = 56;
const ID_MASK: usize = (1 << SHIFT) - 1;

pub fn token(tag: Tag, id: u64) -> Token {
    let tag_bits = match tag {
        Tag::Listener => 1usize,
        Tag::Signals => 2,
        Tag::Connection => 3,
        Tag::AgentOut => 4,
        Tag::AgentIn => 5,
        Tag::Jobs => 6,
    };
    Token((tag_bits << SHIFT) | (id as usize & ID_MASK))
}

pub fn split(token: Token) -> Option<(Tag, u64)> {
    let tag = match token.0 >> SHIFT {
        1 => Tag::Listener,
        2 => Tag::Signals,
        3 => Tag::Connection,
        4 => Tag::AgentOut,
        5 => Tag::AgentIn,
        6 => Tag::Jobs,
        _ => return None,
    };
    Some((tag, (token.0 & ID_MASK) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for tag in [
            Tag::Listener,
            Tag::Signals,
            Tag::Connection,
            Tag::AgentOut,
            Tag::AgentIn,
            Tag::Jobs,
        ] {
            assert_eq!(split(token(tag, 12345)), Some((tag, 12345)));
        }
        assert_eq!(split(Token(0)), None);
    }
}
