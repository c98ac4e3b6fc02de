package dataset

// SetDataFileBytes makes data files roll over after n (estimated) bytes,
// for tests in dataset_test; it returns the function that restores it.
func SetDataFileBytes(n int) func() {
	old := dataFileBytes
	dataFileBytes = n
	return func() { dataFileBytes = old }
}
