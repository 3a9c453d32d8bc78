package auth_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
)

// exampleSigner stands in for a *token.Signer.
type exampleSigner struct{}

func (exampleSigner) Sign(subject string, _ []string, ttl time.Duration) (string, time.Time, error) {
	return "token-for-" + subject, time.Now().Add(ttl), nil
}

// The auth function on a NATS server with one user: a good login gets a
// token, a bad one the same 401 whatever was wrong.
func ExampleHandler() {
	_, js, stop, err := brokertest.ForExample()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// What `shoal up` and `shoal user add` do.
	users, err := auth.CreateUsers(ctx, js, 1)
	if err != nil {
		fmt.Println(err)
		return
	}
	users.Cost = bcrypt.MinCost // quick for the example; keep the default in production
	if err := users.Add(ctx, "alice", "correct horse", []string{"echo"}); err != nil {
		fmt.Println(err)
		return
	}
	limiter, err := auth.CreateLimiter(ctx, js, auth.Limits{}, 1)
	if err != nil {
		fmt.Println(err)
		return
	}

	h := auth.Handler(auth.Config{Users: users, Limiter: limiter, Signer: exampleSigner{}})
	for _, body := range []string{
		`{"username": "alice", "password": "correct horse"}`,
		`{"username": "alice", "password": "wrong horse"}`,
		`{"username": "bob", "password": "correct horse"}`,
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, auth.TokenPath, strings.NewReader(body)))
		if w.Code == http.StatusOK {
			var tok auth.TokenResponse
			_ = json.Unmarshal(w.Body.Bytes(), &tok)
			fmt.Println(w.Code, tok.TokenType, tok.AccessToken, tok.ExpiresIn > 3590)
			continue
		}
		fmt.Print(w.Code, " ", w.Body.String())
	}
	// Output:
	// 200 Bearer token-for-alice true
	// 401 {"error":{"code":"invalid_credentials","message":"invalid username or password"}}
	// 401 {"error":{"code":"invalid_credentials","message":"invalid username or password"}}
}
