package broker

import (
	"context"
	"fmt"
	"time"
)

// retryPause is the pause between two attempts of Retry.
const retryPause = 200 * time.Millisecond

// Retry runs fn until it succeeds or ctx ends, giving each attempt at most
// attempt. While a JetStream cluster elects a leader (it is forming, or a
// node joined or left), a request may go unanswered until its deadline:
// short attempts get through as soon as the cluster answers again, where
// one long wait would not. fn must be safe to run again (idempotent). The
// error returned is the last attempt's.
func Retry(ctx context.Context, attempt time.Duration, fn func(context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		err := fn(actx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up: %w)", err, ctx.Err())
		case <-time.After(retryPause):
		}
	}
}
