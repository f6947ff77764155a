// ESLint flat config: typescript-eslint's type-aware strict rules over the library, its tests,
// and the repo's TypeScript examples.
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  { ignores: ['**/dist/**', '**/node_modules/**'] },
  js.configs.recommended,
  tseslint.configs.strictTypeChecked,
  tseslint.configs.stylisticTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: {
          allowDefaultProject: ['eslint.config.js', 'scripts/*.mjs'],
        },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      // Template literals with numbers are fine and common in messages.
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true }],
      // `void promise` is how fire-and-forget is marked on purpose.
      '@typescript-eslint/no-meaningless-void-operator': 'off',
      '@typescript-eslint/no-confusing-void-expression': ['error', { ignoreArrowShorthand: true }],
      // Public methods are `async` on purpose so that argument checks reject instead of throwing.
      '@typescript-eslint/require-await': 'off',
      // node:test's describe/it return promises that the runner itself tracks.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', name: ['describe', 'it', 'test'], package: 'node:test' }] },
      ],
    },
  },
  {
    // The examples import the package by name: resolve it the way tsconfig.examples.json does.
    files: ['example/*.ts'],
    languageOptions: {
      parserOptions: {
        projectService: false,
        project: './tsconfig.examples.json',
        tsconfigRootDir: import.meta.dirname,
      },
    },
  },
  {
    files: ['**/eslint.config.js', '**/scripts/*.mjs'],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: { globals: { console: 'readonly', process: 'readonly' } },
  },
  {
    files: ['**/test/**/*.ts'],
    rules: {
      // Tests poke at values whose shape they just asserted.
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-unnecessary-condition': 'off',
    },
  },
);
