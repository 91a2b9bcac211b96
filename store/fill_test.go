package store

import (
	"context"
	"database/sql"
	"fmt"
)

// fillImages inserts n images straight into the database (for list tests and benchmarks).
func fillImages(st *Store, n int, owner string) error {
	return st.inTx(context.Background(), func(tx *sql.Tx) error {
		for i := 0; i < n; i++ {
			t := now()
			r := &record{ID: newUUID(), Name: str(fmt.Sprintf("img-%05d", i)), Status: "active", Visibility: "public",
				Owner: str(owner), DiskFormat: str("raw"), ContainerFormat: str("bare"), CreatedAt: t, UpdatedAt: t,
				Size: sql.NullInt64{Int64: int64(i), Valid: true}, Properties: map[string]string{"i": fmt.Sprint(i)},
				Tags: []string{"t" + fmt.Sprint(i%10)}}
			if err := insertRecord(context.Background(), tx, r); err != nil {
				return err
			}
		}
		return nil
	})
}
