# peft_target_defaults(target): C++20, the project's warning set, optional -Werror and sanitizers.
function(peft_target_defaults target)
  target_compile_features(${target} PUBLIC cxx_std_20)
  set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wconversion
                                             # g++ 12 flags fields omitted from designated initializers
                                             -Wno-missing-field-initializers)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    target_compile_options(${target} PRIVATE
                           # g++ 12 false positives on std::string at -O2 (GCC bug 105329)
                           -Wno-restrict
                           # ... and on std::string members of aggregates (GCC bug 107138)
                           -Wno-maybe-uninitialized)
  endif()
  if(PEFT_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(PEFT_SANITIZE)
    target_compile_options(${target} PUBLIC -fsanitize=address,undefined -fno-omit-frame-pointer
                                            -fno-sanitize-recover=undefined)
    target_link_options(${target} PUBLIC -fsanitize=address,undefined)
  endif()
  if(PEFT_TSAN)
    target_compile_options(${target} PUBLIC -fsanitize=thread -fno-omit-frame-pointer)
    target_link_options(${target} PUBLIC -fsanitize=thread)
  endif()
endfunction()
