// Package addr parses and normalises the mailbox addresses that SMTP carries
// in MAIL FROM and RCPT TO (RFC 5321 §4.1.2, RFC 6531 for UTF-8).
package addr

import (
	"errors"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Errors returned by Parse.
var (
	ErrSyntax = errors.New("malformed address")
	ErrUTF8   = errors.New("address needs SMTPUTF8")
)

// Address is a parsed mailbox. Domain is lower-cased; Local keeps its case,
// since RFC 5321 §2.4 leaves local-part case to the receiving host.
type Address struct {
	Local  string
	Domain string
}

// String returns local@domain.
func (a Address) String() string { return a.Local + "@" + a.Domain }

// IsASCII reports whether the address can travel without SMTPUTF8.
func (a Address) IsASCII() bool { return isASCII(a.Local) && isASCII(a.Domain) }

// Parse splits s (as go-smtp hands it over: brackets, source route and
// quoting already removed) into local part and domain and checks both. The
// domain is the part after the last '@', so a quoted local part such as
// "v@remote"@local stays local. utf8 says whether the transaction declared
// SMTPUTF8; without it a non-ASCII address fails with ErrUTF8.
func Parse(s string, utf8ok bool) (Address, error) {
	i := strings.LastIndexByte(s, '@')
	if i <= 0 || i == len(s)-1 {
		return Address{}, ErrSyntax
	}
	// The ASCII test looks at what the client sent: lower-casing first
	// would turn U+212A KELVIN SIGN into an ASCII k.
	ascii := isASCII(s)
	a := Address{Local: s[:i], Domain: strings.ToLower(s[i+1:])}
	if !utf8.ValidString(s) || len(a.Local) > 64*4 || len(a.Domain) > 255 {
		return Address{}, ErrSyntax
	}
	for _, r := range a.Local {
		if r < 0x21 || r == 0x7f {
			return Address{}, ErrSyntax
		}
	}
	if !validDomain(a.Domain) {
		return Address{}, ErrSyntax
	}
	if !utf8ok && !ascii {
		return Address{}, ErrUTF8
	}
	return a, nil
}

// validDomain accepts a dot-separated host name (letters, digits, hyphens, or
// UTF-8 U-labels) or an address literal [1.2.3.4] / [IPv6:...]
// (RFC 5321 §4.1.3). Trailing dots and empty labels are refused.
func validDomain(d string) bool {
	if strings.HasPrefix(d, "[") {
		if !strings.HasSuffix(d, "]") {
			return false
		}
		lit := d[1 : len(d)-1]
		if v6, ok := strings.CutPrefix(lit, "ipv6:"); ok {
			ip, err := netip.ParseAddr(v6)
			// RFC 5321 §4.1.3: an IPv6 literal has no zone.
			return err == nil && ip.Is6() && ip.Zone() == ""
		}
		ip, err := netip.ParseAddr(lit)
		return err == nil && ip.Is4()
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			case r >= 0x80:
			default:
				return false
			}
		}
	}
	return true
}

// IsLiteral reports whether the domain is an address literal.
func (a Address) IsLiteral() bool { return strings.HasPrefix(a.Domain, "[") }

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
