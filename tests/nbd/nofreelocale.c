/* nbdkit-qed tests: preloaded into nbdkit with libasan in sanitizer
 * builds.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * libp11-kit's constructor (nbdkit loads it through gnutls) calls
 * newlocale before libasan is initialised; libasan initialises in the
 * middle of it and leaves glibc's setlocale lock unbalanced.  After
 * the first translated error message, p11-kit's destructor then waits
 * in freelocale for ever and nbdkit never exits.  Freeing no locales
 * at exit costs nothing.
 */

#include <locale.h>

void
freelocale (locale_t l)
{
}
