package callback_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/platform/callback"
)

func TestCheckURL(t *testing.T) {
	long := "https://hooks.example.com/" + strings.Repeat("a", callback.MaxURLLength)
	tests := []struct {
		name    string
		raw     string
		wantErr string // "" when the URL is accepted
	}{
		{"https", "https://hooks.example.com/done?token=secret", ""},
		{"http with port", "http://hooks.example.com:8080/done", ""},
		{"host names are not resolved", "http://localhost:8080/done", ""},
		{"public literal IPv4", "http://8.8.8.8/done", ""},
		{"longest allowed", long[:callback.MaxURLLength], ""},
		{"too long", long, "at most 2048 are allowed"},
		{"ftp", "ftp://x", `callback URL "ftp://x": the scheme must be http or https`},
		{"file", "file:///etc/passwd", "the scheme must be http or https"},
		{"javascript", "javascript:alert(1)", "the scheme must be http or https"},
		{"relative", "/done", "must be absolute"},
		{"scheme-relative", "//hooks.example.com/done", "must be absolute"},
		{"empty", "", "must be absolute"},
		{"no host", "http:///done", "must name a host"},
		{"opaque", "http:hooks.example.com", "must name a host"},
		{"port only", "http://:8080/", "must name a host"},
		{"userinfo", "https://user:secret@hooks.example.com/", "must not carry a user name or password"},
		{"user only", "https://secret@hooks.example.com/", "must not carry a user name or password"},
		{"fragment", "https://hooks.example.com/done#secret", "must not have a fragment"},
		{"empty fragment", "https://hooks.example.com/done#", "must not have a fragment"},
		{"port zero", "http://hooks.example.com:0/", "port must be between 1 and 65535"},
		{"port too large", "http://hooks.example.com:65536/", "port must be between 1 and 65535"},
		{"unparseable", "http://[::1/?token=secret", "not a valid URL"},
		{"control character", "http://hooks.example.com/\x7f?token=secret", "not a valid URL"},
	}
	var p *callback.Policy // the default policy
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := p.CheckURL(tt.raw)
			if tt.wantErr == "" {
				if err != nil || u == nil {
					t.Fatalf("CheckURL(%q) = %v, %v; want it accepted", tt.raw, u, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("CheckURL(%q) error = %v, want one containing %q", tt.raw, err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("CheckURL(%q) error %q repeats a secret", tt.raw, err)
			}
		})
	}
}

func TestCheckURLAddresses(t *testing.T) {
	tests := []struct {
		host    string
		allow   []string
		allowed bool
	}{
		{"127.0.0.1", nil, false},
		{"127.0.0.1", []string{"127.0.0.0/8"}, true},
		{"127.0.0.1", []string{"127.0.0.1"}, true},
		{"127.0.0.2", []string{"127.0.0.1"}, false},
		{"[::1]", nil, false},
		{"[::1]", []string{"::1"}, true},
		{"[::1]", []string{"127.0.0.0/8"}, false},
		{"[::ffff:127.0.0.1]", nil, false},
		{"[::ffff:127.0.0.1]", []string{"127.0.0.0/8"}, true},
		{"[::ffff:100.64.0.1]", nil, false},
		{"[::ffff:192.0.2.1]", nil, false},
		{"169.254.169.254", nil, false},
		{"169.254.169.254", []string{"169.254.169.254"}, true},
		{"10.1.2.3", nil, false},
		{"10.1.2.3", []string{"10.0.0.0/8"}, true},
		{"10.1.2.3", []string{"10.2.0.0/16"}, false},
		{"10.1.2.3", []string{"10.1.2.3/8"}, true}, // host bits are ignored
		{"10.1.2.3", []string{"hooks.example.com"}, false},
		{"0.0.0.0", nil, false},
		{"0.1.2.3", nil, false},
		{"100.64.0.1", nil, false},
		{"100.127.255.255", nil, false},
		{"172.16.0.1", nil, false},
		{"172.31.255.255", nil, false},
		{"192.168.1.1", nil, false},
		{"192.0.0.1", nil, false},
		{"192.0.2.1", nil, false},
		{"198.18.0.1", nil, false},
		{"198.19.255.255", nil, false},
		{"198.51.100.1", nil, false},
		{"203.0.113.1", nil, false},
		{"224.0.0.1", nil, false},
		{"240.0.0.1", nil, false},
		{"255.255.255.255", nil, false},
		{"[::]", nil, false},
		{"[fe80::1]", nil, false},
		{"[fe80::1%25eth0]", nil, false},
		{"[fe80::1%25eth0]", []string{"fe80::/10"}, true},
		{"[fd00::1]", nil, false},
		{"[fd00::1]", []string{"fd00::/8"}, true},
		{"[fc00::1]", nil, false},
		{"[ff02::1]", nil, false},
		{"[2001:db8::1]", nil, false},
		{"[::127.0.0.1]", nil, false},
		{"[64:ff9b::7f00:1]", nil, false},    // NAT64 of 127.0.0.1
		{"[64:ff9b::a9fe:a9fe]", nil, false}, // NAT64 of 169.254.169.254
		{"[2002:7f00:1::1]", nil, false},     // 6to4 of 127.0.0.1
		{"[2002:c0a8:101::1]", nil, false},   // 6to4 of 192.168.1.1
		{"8.8.8.8", nil, true},               // never connected to
		{"1.1.1.1", nil, true},
		{"172.32.0.1", nil, true},  // just past 172.16.0.0/12
		{"100.128.0.1", nil, true}, // just past 100.64.0.0/10
		{"[::ffff:8.8.8.8]", nil, true},
		{"[64:ff9b::808:808]", nil, true}, // NAT64 of 8.8.8.8
		{"[2002:808:808::1]", nil, true},  // 6to4 of 8.8.8.8
		{"[2606:4700:4700::1111]", nil, true},
	}
	for _, tt := range tests {
		name := tt.host
		if tt.allow != nil {
			name += " allowing " + strings.Join(tt.allow, ",")
		}
		t.Run(name, func(t *testing.T) {
			p, err := callback.ParsePolicy(tt.allow)
			if err != nil {
				t.Fatal(err)
			}
			raw := "http://" + tt.host + "/done"
			_, err = p.CheckURL(raw)
			if tt.allowed {
				if err != nil {
					t.Fatalf("CheckURL(%q) = %v, want it allowed", raw, err)
				}
				return
			}
			if !errors.Is(err, callback.ErrRefused) {
				t.Fatalf("CheckURL(%q) = %v, want %v", raw, err, callback.ErrRefused)
			}
			if !strings.Contains(err.Error(), "not a public address") || !strings.Contains(err.Error(), "--callback-allow=") {
				t.Errorf("CheckURL(%q) = %v; want it to say why and how to allow it", raw, err)
			}
		})
	}
}

func TestParsePolicy(t *testing.T) {
	good := [][]string{
		nil,
		{},
		{"10.0.0.0/8", "fd00::/8"},
		{"127.0.0.1", "::1"},
		{"hooks.internal.example", "Hooks.Example.COM", "localhost", "localhost."},
		{"*.svc.cluster.local", "my_service.internal"},
		{" 10.0.0.0/8", "localhost "},
	}
	for _, entries := range good {
		if p, err := callback.ParsePolicy(entries); err != nil || p == nil {
			t.Errorf("ParsePolicy(%q) = %v, %v; want a policy", entries, p, err)
		}
	}
	bad := []string{
		"",
		" ",
		"10.0.0.0/33",
		"10.0.0.0/",
		"/8",
		"300.1.1.1",
		"10.0.0",
		"fe80::1%eth0",
		"fe80::/10%eth0",
		"::g",
		"*",
		"*.",
		"*.*.example.com",
		"hooks.*.example.com",
		"http://hooks.example.com",
		"hooks.example.com:8080",
		"hooks.example.com/path",
		"hooks example.com",
		"a..b",
		"-hooks.example.com",
		"hooks-.example.com",
		strings.Repeat("a", 64) + ".example.com",
		"10.0.0.0/8,localhost",
	}
	for _, e := range bad {
		_, err := callback.ParsePolicy([]string{"10.0.0.0/8", e})
		if err == nil || !strings.Contains(err.Error(), `callback allow-list entry "`+e+`"`) {
			t.Errorf("ParsePolicy(%q) error = %v, want one naming the entry", e, err)
		}
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ raw, want string }{
		{"https://hooks.example.com/done", "https://hooks.example.com/done"},
		{"https://user:secret@hooks.example.com:8443/a/b?token=secret#secret", "https://hooks.example.com:8443/a/b"},
		{"http://[::1]:8080/a%2Fb?x=secret", "http://[::1]:8080/a%2Fb"},
		{"http://hooks.example.com", "http://hooks.example.com"},
		{"http://[::1/?token=secret", "(unparseable URL)"},
	}
	for _, tt := range tests {
		if got := callback.Redact(tt.raw); got != tt.want {
			t.Errorf("Redact(%q) = %q, want %q", tt.raw, got, tt.want)
		}
	}
}
