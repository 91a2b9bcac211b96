//go:build !unix

package cache

import (
	"fmt"
	"os"
	"path/filepath"
)

// lockDir opens DIR/.lock; without flock, nothing keeps a second process out.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	return f, nil
}
