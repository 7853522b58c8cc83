package oslo

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// The reconnect backoff is oslo's: 1 s, then 2 s more per failure, at most
// 30 s, and 1 s again once the broker served.
func TestBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var b backoff
		want := []time.Duration{1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 30, 30}
		for i, w := range want {
			w *= time.Second
			if got := b.peek(); got != w {
				t.Fatalf("wait %d: peek = %s, want %s", i+1, got, w)
			}
			start := time.Now()
			if err := b.wait(context.Background()); err != nil {
				t.Fatal(err)
			}
			if waited := time.Since(start); waited != w {
				t.Fatalf("wait %d took %s, want %s", i+1, waited, w)
			}
		}
		b.reset()
		if got := b.peek(); got != time.Second {
			t.Errorf("after reset: peek = %s, want 1s", got)
		}

		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(200*time.Millisecond, cancel)
		start := time.Now()
		if err := b.wait(ctx); !errors.Is(err, context.Canceled) || time.Since(start) != 200*time.Millisecond {
			t.Errorf("wait cancelled after 200ms = %v after %s", err, time.Since(start))
		}
	})
}
