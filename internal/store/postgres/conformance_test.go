package postgres_test

import (
	"context"
	"testing"

	"github.com/relaymail/relay/internal/store/postgres"
	"github.com/relaymail/relay/internal/store/storetest"
	"github.com/relaymail/relay/internal/testkit/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Engine {
		s, err := postgres.Open(context.Background(), pgtest.URL(t), postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}, storetest.Options{LeasesExpire: true})
}
