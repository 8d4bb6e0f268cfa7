package badger_test

import (
	"testing"

	"github.com/relaymail/relay/internal/store/badger"
	"github.com/relaymail/relay/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Engine {
		db, err := badger.Open(t.TempDir(), badger.Options{})
		if err != nil {
			t.Fatal(err)
		}
		s := badger.New(db, nil)
		t.Cleanup(func() { s.Close() })
		return s
	}, storetest.Options{})
}
