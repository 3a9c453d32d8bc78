package token

import (
	"context"
	"errors"
	"testing"

	"github.com/MicahParks/jwkset"
)

func TestSources(t *testing.T) {
	a, err := StaticKeys(testKey(EdDSA))
	if err != nil {
		t.Fatal(err)
	}
	b, err := StaticKeys(testKey(ES256))
	if err != nil {
		t.Fatal(err)
	}
	down := failingKeys{errors.New("KV unreachable")}
	ctx := context.Background()
	tests := []struct {
		name    string
		s       Sources
		kid     string
		found   bool
		faulted bool
	}{
		{"in the first", Sources{a, b}, kidOf(testKey(EdDSA)), true, false},
		{"in the second", Sources{a, b}, kidOf(testKey(ES256)), true, false},
		{"in none", Sources{a, b}, "nope", false, false},
		{"found past a failing source", Sources{down, b}, kidOf(testKey(ES256)), true, false},
		{"a fault is not a missing key", Sources{down, a}, "nope", false, true},
		{"empty", nil, "nope", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := tt.s.KeyRead(ctx, tt.kid)
			switch {
			case tt.found && (err != nil || k.Marshal().KID != tt.kid):
				t.Errorf("KeyRead = %v, %v; want the key", k.Marshal().KID, err)
			case !tt.found && err == nil:
				t.Error("KeyRead found a key")
			case !tt.found && errors.Is(err, jwkset.ErrKeyNotFound) == tt.faulted:
				t.Errorf("KeyRead error %v: not-found %v, want %v", err, !tt.faulted, !tt.faulted)
			}
		})
	}
}
