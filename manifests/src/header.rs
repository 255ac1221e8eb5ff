//! The header every signed document (a manifest, a channel index) opens
//! with, and its one check.

use time::OffsetDateTime;

use crate::rfc3339;

/// A signed document's header fields, as read.
pub(crate) struct Header<'a> {
    pub schema: u32,
    /// The channel a manifest belongs to; an index has none.
    pub channel: Option<&'a str>,
    /// Strictly increasing within a channel or index: rollback protection.
    pub version: u64,
    pub published: OffsetDateTime,
    pub expires: OffsetDateTime,
}

impl Header<'_> {
    /// Checks the header field by field, in the order the fields are
    /// written: the schema is `expected` (`newer` ends the message when it
    /// is not), the channel is a plain name, the version is at least 1 and
    /// the document expires after it was published.
    pub(crate) fn check(&self, expected: u32, newer: &str) -> Result<(), String> {
        if self.schema != expected {
            return Err(format!("schema: expected {expected}, got {}; {newer}", self.schema));
        }
        if let Some(channel) = self.channel
            && (channel.is_empty()
                || !channel.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        {
            return Err(format!("channel: expected a name of letters, digits, '-', '_' or '.', got {channel:?}"));
        }
        if self.version == 0 {
            return Err("version: expected an integer greater than 0".into());
        }
        if self.expires <= self.published {
            return Err(format!(
                "expires: expected a time after published ({}), got {}",
                rfc3339(self.published),
                rfc3339(self.expires)
            ));
        }
        Ok(())
    }
}
