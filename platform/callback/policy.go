package callback

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MaxURLLength is the longest callback URL accepted, in bytes.
const MaxURLLength = 2048

// ErrRefused marks a callback address the policy does not allow; a
// delivery refused this way is not retried.
var ErrRefused = errors.New("address not allowed")

// Policy decides which callback URLs Shoal may POST to. It is immutable,
// so one Policy may serve any number of goroutines. The zero Policy, like
// a nil one, allows public addresses only.
type Policy struct {
	prefixes []netip.Prefix
	names    map[string]bool // exact host names, lower case, no trailing dot
	suffixes []string        // ".svc.cluster.local" for "*.svc.cluster.local"
}

// ParsePolicy builds a policy from allow-list entries (the values of
// --callback-allow): CIDR prefixes ("10.0.0.0/8", "fd00::/8"), bare
// addresses (a /32 or /128), or host names, exact and case-insensitive,
// where a leading "*." matches any subdomain ("*.svc.cluster.local").
// No entries is the default policy. A bad entry is an error naming it.
func ParsePolicy(entries []string) (*Policy, error) {
	p := &Policy{names: map[string]bool{}}
	for _, e := range entries {
		if err := p.add(e); err != nil {
			return nil, fmt.Errorf("callback allow-list entry %q: %w", e, err)
		}
	}
	return p, nil
}

func (p *Policy) add(e string) error {
	e = strings.TrimSpace(e) // as in --callback-allow='10.0.0.0/8, localhost'
	switch {
	case strings.Contains(e, "://"):
		return errors.New("give a host name, not a URL")
	case strings.Contains(e, "/"):
		pfx, err := netip.ParsePrefix(e)
		if err != nil {
			return errors.New("not a valid CIDR prefix (e.g. 10.0.0.0/8 or fd00::/8)")
		}
		p.prefixes = append(p.prefixes, pfx) // Contains ignores host bits
	case strings.Contains(e, ":") || isNumeric(e[strings.LastIndexByte(e, '.')+1:]):
		a, err := netip.ParseAddr(e)
		switch {
		case err != nil && strings.Count(e, ":") == 1:
			return errors.New("give a host name or address without a port")
		case err != nil:
			return errors.New("not a valid IP address")
		case a.Zone() != "":
			return errors.New("an address with a zone cannot be allowed")
		}
		p.prefixes = append(p.prefixes, netip.PrefixFrom(a, a.BitLen()))
	default:
		name := strings.ToLower(strings.TrimSuffix(e, "."))
		wild := strings.HasPrefix(name, "*.")
		if wild {
			name = name[2:]
		}
		if !isHostName(name) {
			return errors.New("not an IP address, CIDR prefix or host name (e.g. hooks.example.com or *.svc.cluster.local)")
		}
		if wild {
			p.suffixes = append(p.suffixes, "."+name)
		} else {
			p.names[name] = true
		}
	}
	return nil
}

// isHostName reports whether s is a DNS name: dot-separated labels of
// letters, digits, '-' and '_' (seen in internal names).
func isHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func isNumeric(s string) bool {
	_, err := strconv.ParseUint(s, 10, 64)
	return err == nil
}

// allowsName reports whether host matches a host-name entry.
func (p *Policy) allowsName(host string) bool {
	if p == nil {
		return false
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if p.names[host] {
		return true
	}
	for _, s := range p.suffixes {
		if strings.HasSuffix(host, s) && len(host) > len(s) {
			return true
		}
	}
	return false
}

// check returns nil when a may be connected to for host (a name, or a as
// text), and otherwise an ErrRefused saying how to allow it.
func (p *Policy) check(host string, a netip.Addr) error {
	a = a.WithZone("")
	if p != nil {
		for _, pfx := range p.prefixes {
			if pfx.Contains(a) || pfx.Contains(a.Unmap()) {
				return nil
			}
		}
	}
	why := notPublic(a)
	if why == "" {
		return nil
	}
	hint := a.Unmap().String()
	if _, err := netip.ParseAddr(host); err == nil {
		return fmt.Errorf("%w: %s is not a public address (%s); to allow it, add --callback-allow=%s or a CIDR prefix that contains it",
			ErrRefused, a, why, hint)
	}
	return fmt.Errorf("%w: %s resolves to %s, which is not a public address (%s); to allow it, add --callback-allow=%s (the name) or --callback-allow=%s",
		ErrRefused, host, a, why, host, hint)
}

// nonPublic lists the ranges no callback reaches unless allowed, each with
// what it is (RFC 6890 and the IANA special-purpose registries).
var nonPublic = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignment"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation"},
	{netip.MustParsePrefix("192.88.99.0/24"), "6to4 relay"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved or broadcast"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64"},
	{netip.MustParsePrefix("100::/64"), "discard-only"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("fc00::/7"), "unique local"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("fec0::/10"), "site-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// notPublic returns what kind of non-public address a is, or "" when a
// is public unicast. IPv6 forms that embed an IPv4 address (mapped,
// NAT64, 6to4) are judged by that address, since that is where they lead.
func notPublic(a netip.Addr) string {
	if a.Is4In6() {
		if why := notPublic(a.Unmap()); why != "" {
			return "IPv4-mapped " + why
		}
		return ""
	}
	if nat64.Contains(a) || sixToFour.Contains(a) {
		b := a.As16()
		v4 := netip.AddrFrom4([4]byte(b[12:16]))
		if sixToFour.Contains(a) {
			v4 = netip.AddrFrom4([4]byte(b[2:6]))
		}
		if why := notPublic(v4); why != "" {
			return "embeds " + v4.String() + ", " + why
		}
		return ""
	}
	for _, r := range nonPublic {
		if r.prefix.Contains(a) {
			return r.what
		}
	}
	if !a.IsGlobalUnicast() || a.IsPrivate() { // netip's view, should the table miss a range
		return "not global unicast"
	}
	return ""
}

// CheckURL validates a callback URL at submission, before it is stored:
// an absolute http or https URL with a host, no user name or password, no
// fragment, at most MaxURLLength bytes. A literal IP host must be allowed
// by the policy; a host name is judged when delivery connects, on the
// addresses it resolves to then. Errors are sentences for the API user.
func (p *Policy) CheckURL(raw string) (*url.URL, error) {
	if len(raw) > MaxURLLength {
		return nil, fmt.Errorf("the callback URL is %d bytes long; at most %d are allowed", len(raw), MaxURLLength)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("callback URL %q: "+format, append([]any{Redact(raw)}, args...)...)
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // ue repeats the URL, secrets and all
		}
		return nil, fmt.Errorf("the callback URL is not a valid URL: %w", err)
	}
	switch {
	case !u.IsAbs():
		return nil, bad("the URL must be absolute, starting with http:// or https://")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, bad("the scheme must be http or https")
	case u.Opaque != "" || u.Hostname() == "":
		return nil, bad("the URL must name a host, as in https://hooks.example.com/path")
	case u.User != nil:
		return nil, bad("the URL must not carry a user name or password; Shoal does not send them")
	case strings.Contains(raw, "#"):
		return nil, bad("the URL must not have a fragment (#...)")
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, bad("the port must be between 1 and 65535")
		}
	}
	if a, err := netip.ParseAddr(u.Hostname()); err == nil {
		if err := p.check(u.Hostname(), a); err != nil {
			return nil, bad("%w", err)
		}
	}
	return u, nil
}

// Client returns an HTTP client for Deliver that enforces the policy on
// every connection it makes, checking the address actually dialled, so a
// name that resolves differently later (DNS rebinding) gains nothing. It
// ignores proxy settings from the environment, which would route around
// the check, and never follows redirects. timeout bounds a whole attempt.
func (p *Policy) Client(timeout time.Duration) *http.Client {
	if timeout <= 0 {
		panic("callback: Client expects timeout > 0")
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                  nil, // a proxy would dial for us, past the check
			DialContext:            p.dial,
			ForceAttemptHTTP2:      true,
			TLSHandshakeTimeout:    10 * time.Second,
			ExpectContinueTimeout:  time.Second,
			IdleConnTimeout:        90 * time.Second,
			MaxIdleConns:           100,
			MaxResponseHeaderBytes: maxDrain,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// dial connects to addr, refusing any address the policy does not allow.
// Control runs after resolution and before connect, for each address the
// dialer tries.
func (p *Policy) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	if !p.allowsName(host) {
		d.Control = func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: cannot judge address %q: %v", ErrRefused, address, err)
			}
			return p.check(host, ap.Addr())
		}
	}
	return d.DialContext(ctx, network, addr)
}
