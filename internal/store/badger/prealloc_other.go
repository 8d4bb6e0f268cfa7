//go:build !linux

package badger

// preallocateDir does nothing outside Linux, where the relay does not run in
// production; there a full disk can still fault Badger's mapped files.
func preallocateDir(string) error { return nil }
