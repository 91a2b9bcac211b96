package store

import (
	"os"
	"syscall"
)

// startWriteback asks the kernel to start writing a range of f to disk now, without
// waiting, so that the fsync that ends an upload has little left to do.
func startWriteback(f *os.File, off, n int64) {
	const syncFileRangeWrite = 2 // SYNC_FILE_RANGE_WRITE
	syscall.SyncFileRange(int(f.Fd()), off, n, syncFileRangeWrite)
}
