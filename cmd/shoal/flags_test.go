package main

import "testing"

func TestByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"8MiB", 8 << 20, true},
		{"512KiB", 512 << 10, true},
		{"1MB", 1_000_000, true},
		{"2G", 2 << 30, true},
		{"1048576", 1 << 20, true},
		{"10 B", 10, true},
		{"0", 0, false},
		{"-1MiB", 0, false},
		{"8XB", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		var b byteSize
		err := b.Set(tt.in)
		if (err == nil) != tt.ok || (tt.ok && int64(b) != tt.want) {
			t.Errorf("Set(%q) = %d, %v; want %d, ok %v", tt.in, b, err, tt.want, tt.ok)
		}
	}
	for _, n := range []byteSize{8 << 20, 512 << 10, 1000} {
		var b byteSize
		if err := b.Set(n.String()); err != nil || b != n {
			t.Errorf("String() of %d = %q does not parse back: %d, %v", int64(n), n.String(), b, err)
		}
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://alice:s3cret@n1:4222,nats://bob:pw@n2:4222", "nats://***@n1:4222,nats://***@n2:4222"},
		{"alice:s3cret@n1:4222", "***@n1:4222"},
	}
	for _, tt := range tests {
		if got := redact(tt.in); got != tt.want {
			t.Errorf("redact(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
