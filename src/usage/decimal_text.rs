//! A cost as text without an allocation: what `Decimal`'s `Display` writes (every digit of its
//! scale, a `-` for a negative value), from its mantissa and scale.
//!
//! Why not `Display`: a call's cost is written up to three times per request (the
//! `x-sluice-cost-usd` header, the access line, the request log), and `rust_decimal`'s `Display`
//! took ~600–1,300 instructions a time in `bench/instructions.sh` (it divides the 96-bit mantissa
//! by ten digit by digit, then pads through the formatter); this is `itoa` on the mantissa plus a
//! decimal point. A test compares both over every scale and sign.

use rust_decimal::Decimal;

/// Longest text: a sign, 29 digits (the 96-bit mantissa) or `0.` and 28 digits (the largest scale),
/// and a point.
const MAX_LEN: usize = 32;

/// `Decimal`'s `Display` text, held inline.
#[derive(Clone, Copy)]
pub struct DecimalText {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl DecimalText {
    /// The text of `value`, as `value.to_string()` writes it.
    pub fn new(value: Decimal) -> Self {
        let mut text = Self {
            buf: [0; MAX_LEN],
            len: 0,
        };
        let mut mantissa = itoa::Buffer::new();
        let digits = mantissa.format(value.mantissa().unsigned_abs()).as_bytes();
        let scale = usize::try_from(value.scale()).unwrap_or(usize::MAX);
        if value.is_sign_negative() {
            text.push(b"-");
        }
        if scale == 0 {
            text.push(digits);
        } else if let Some(point) = digits.len().checked_sub(scale).filter(|&p| p > 0) {
            let (whole, fraction) = digits.split_at(point);
            text.push(whole);
            text.push(b".");
            text.push(fraction);
        } else {
            text.push(b"0.");
            for _ in digits.len()..scale {
                text.push(b"0");
            }
            text.push(digits);
        }
        text
    }

    fn push(&mut self, bytes: &[u8]) {
        if let Some(slot) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            slot.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, `-` and `.` are ever written.
        self.buf
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for DecimalText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: Decimal) {
        assert_eq!(
            DecimalText::new(value).as_str(),
            value.to_string(),
            "{value:?}"
        );
    }

    #[test]
    fn writes_what_display_writes_for_every_scale_and_sign() {
        let mantissas: [i128; 9] = [
            0,
            1,
            7,
            10,
            123_456,
            1_065_000,
            999_999_999_999,
            79_228_162_514_264_337_593_543_950_335,
            -42,
        ];
        for m in mantissas {
            for scale in 0..=28 {
                let mut value = Decimal::from_i128_with_scale(m, scale);
                check(value);
                value.set_sign_negative(true);
                check(value);
            }
        }
        check(Decimal::MAX);
        check(Decimal::MIN);
        check(Decimal::ZERO);
    }

    #[test]
    fn costs_as_the_price_table_makes_them() {
        // cost() normalizes: no trailing zeros.
        assert_eq!(
            DecimalText::new(Decimal::new(1065, 8)).as_str(),
            "0.00001065"
        );
        assert_eq!(DecimalText::new(Decimal::new(15, 1)).as_str(), "1.5");
        assert_eq!(DecimalText::new(Decimal::new(3, 0)).as_str(), "3");
    }
}
