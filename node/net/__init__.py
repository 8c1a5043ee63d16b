"""Network mechanics shared by every stage that talks DICOM: ingest (the listener), export (the
sender) and prior retrieval. Socket options live in `sockets`, association helpers in `assoc`.
Nothing here changes a library's process-wide state."""
