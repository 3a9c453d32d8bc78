package callback

import "testing"

// Host names other than localhost cannot be resolved in tests, so the
// matching of name entries is pinned down here, below the dialer.
func TestPolicyAllowsName(t *testing.T) {
	p, err := ParsePolicy([]string{"hooks.internal.example", "*.svc.cluster.local", "Mixed.Case.Example."})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host string
		want bool
	}{
		{"hooks.internal.example", true},
		{"HOOKS.Internal.Example", true},
		{"hooks.internal.example.", true},
		{"mixed.case.example", true},
		{"a.hooks.internal.example", false}, // exact names do not cover subdomains
		{"internal.example", false},
		{"hooks.internal.example.evil.com", false},
		{"evilhooks.internal.example", false},
		{"api.svc.cluster.local", true},
		{"a.b.svc.cluster.local", true},
		{"API.SVC.cluster.local", true},
		{"svc.cluster.local", false}, // "*." needs a subdomain
		{"evilsvc.cluster.local", false},
		{"svc.cluster.local.evil.com", false},
		{"127.0.0.1", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := p.allowsName(tt.host); got != tt.want {
			t.Errorf("allowsName(%q) = %v, want %v", tt.host, got, tt.want)
		}
	}
	var defaultPolicy *Policy
	if defaultPolicy.allowsName("localhost") {
		t.Error("the default policy allows the name localhost")
	}
}
