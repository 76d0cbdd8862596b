/* The libiscsi headers sds-sys generates bindings for (Debian: libiscsi-dev). */
#include <stdint.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
