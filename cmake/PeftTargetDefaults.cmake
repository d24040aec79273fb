# peft_target_defaults(target): C++20, the project's warning set, optional -Werror and sanitizers.
function(peft_target_defaults target)
  target_compile_features(${target} PUBLIC cxx_std_20)
  set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wconversion
                                             # g++ 12 flags fields omitted from designated initializers
                                             -Wno-missing-field-initializers)
  if(PEFT_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(PEFT_SANITIZE)
    target_compile_options(${target} PUBLIC -fsanitize=address,undefined -fno-omit-frame-pointer
                                            -fno-sanitize-recover=undefined)
    target_link_options(${target} PUBLIC -fsanitize=address,undefined)
  endif()
endfunction()
