package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/broker"
)

func TestRetry(t *testing.T) {
	t.Run("until it succeeds, each attempt bounded", func(t *testing.T) {
		calls := 0
		err := broker.Retry(t.Context(), 50*time.Millisecond, func(ctx context.Context) error {
			calls++
			if calls < 3 {
				<-ctx.Done() // an unanswered request
				return ctx.Err()
			}
			return nil
		})
		if err != nil || calls != 3 {
			t.Errorf("Retry = %v after %d calls, want success on the 3rd", err, calls)
		}
	})
	t.Run("gives up when ctx ends, with the last error", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		boom := errors.New("no meta leader")
		start := time.Now()
		err := broker.Retry(ctx, time.Second, func(context.Context) error { return boom })
		if !errors.Is(err, boom) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Retry = %v, want the last error and the deadline", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("gave up after %s, want about 300ms", took)
		}
	})
}
